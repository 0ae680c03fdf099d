{{/*
Names and labels of the bundled Grafana, as `helm create` makes them: objects are
<release>-grafana unless the release name already contains "grafana".
*/}}
{{- define "grafana.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "grafana.fullname" -}}
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

{{- define "grafana.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{ include "grafana.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/component: dashboards
{{- end }}

{{- define "grafana.selectorLabels" -}}
app.kubernetes.io/name: {{ include "grafana.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/*
The Secret with the admin credentials: the user's, or <fullname> made by this chart.
*/}}
{{- define "grafana.secretName" -}}
{{- default (include "grafana.fullname" .) .Values.admin.existingSecret }}
{{- end }}

{{/*
The Prometheus datasource URL: .Values.prometheusUrl (rendered with tpl), else
the Service of the bundled Prometheus subchart of the same release
(<release>-prometheus, named as that chart names it without overrides).
*/}}
{{- define "grafana.prometheusUrl" -}}
{{- if .Values.prometheusUrl }}
{{- tpl .Values.prometheusUrl . }}
{{- else if contains "prometheus" .Release.Name }}
{{- printf "http://%s:9090" (.Release.Name | trunc 63 | trimSuffix "-") }}
{{- else }}
{{- printf "http://%s:9090" (printf "%s-prometheus" .Release.Name | trunc 63 | trimSuffix "-") }}
{{- end }}
{{- end }}
