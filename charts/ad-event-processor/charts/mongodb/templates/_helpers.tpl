{{/*
Names and labels of the bundled MongoDB, as `helm create` makes them: objects are
<release>-mongodb unless the release name already contains "mongodb".
*/}}
{{- define "mongodb.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "mongodb.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{/*
The StatefulSet's governing Service, within 63 characters.
*/}}
{{- define "mongodb.headlessName" -}}
{{- printf "%s-headless" (include "mongodb.fullname" . | trunc 54 | trimSuffix "-") }}
{{- end }}

{{- define "mongodb.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{ include "mongodb.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/component: store
{{- end }}

{{- define "mongodb.selectorLabels" -}}
app.kubernetes.io/name: {{ include "mongodb.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/*
The StatefulSet's volumeClaimTemplates (a YAML list, empty without persistence).
The parent chart reads it too, to refuse an upgrade that would change them.
*/}}
{{- define "mongodb.volumeClaimTemplates" -}}
{{- if .Values.persistence.enabled }}
- metadata:
    name: data
    labels:
      {{- include "mongodb.selectorLabels" . | nindent 6 }}
  spec:
    accessModes: ["ReadWriteOnce"]
    {{- with .Values.persistence.storageClass }}
    storageClassName: {{ . }}
    {{- end }}
    resources:
      requests:
        storage: {{ .Values.persistence.size }}
{{- else }}
[]
{{- end }}
{{- end }}
