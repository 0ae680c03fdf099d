{{/*
Names and labels of the bundled Prometheus, as `helm create` makes them: objects are
<release>-prometheus unless the release name already contains "prometheus".
*/}}
{{- define "prometheus.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "prometheus.fullname" -}}
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

{{- define "prometheus.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{ include "prometheus.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/component: monitoring
{{- end }}

{{- define "prometheus.selectorLabels" -}}
app.kubernetes.io/name: {{ include "prometheus.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/*
prometheus.yml: the scrape jobs of .Values.scrapeConfigs (rendered with tpl, so
they may name {{ .Release.Name }} and {{ .Release.Namespace }}), Prometheus
itself, and the rule files of files/ (mounted at /etc/prometheus/rules).
*/}}
{{- define "prometheus.config" -}}
global:
  scrape_interval: {{ .Values.scrapeInterval }}
  evaluation_interval: {{ .Values.evaluationInterval }}
rule_files:
  - /etc/prometheus/rules/*.yaml
scrape_configs:
  {{- with .Values.scrapeConfigs }}
  {{- tpl (toYaml .) $ | nindent 2 }}
  {{- end }}
  - job_name: prometheus
    static_configs:
      - targets: ["localhost:9090"]
{{- end }}
