{{/*
prometheus.yml of the bundled Prometheus: the server pods of this release, found
through Kubernetes service discovery in the release namespace, scraped on the
container port named "metrics". Series get namespace and pod labels, which
prometheus-adapter needs to serve per-pod metrics to the HPA.
*/}}
{{- define "ad-event-processor.prometheusConfig" -}}
{{- $selector := list }}
{{- range $key, $value := include "ad-event-processor.selectorLabels" . | fromYaml }}
{{- $selector = append $selector (printf "%s=%s" $key $value) }}
{{- end -}}
global:
  scrape_interval: {{ .Values.prometheus.scrapeInterval }}
  evaluation_interval: {{ .Values.prometheus.evaluationInterval }}
rule_files:
  - /etc/prometheus/alerts.yaml
scrape_configs:
  - job_name: ad-event-processor
    kubernetes_sd_configs:
      - role: pod
        namespaces:
          names:
            - {{ .Release.Namespace }}
        selectors:
          - role: pod
            label: {{ join "," $selector | quote }}
    relabel_configs:
      - source_labels: [__meta_kubernetes_pod_container_port_name]
        regex: metrics
        action: keep
      - source_labels: [__meta_kubernetes_pod_phase]
        regex: Pending|Succeeded|Failed
        action: drop
      - source_labels: [__meta_kubernetes_namespace]
        target_label: namespace
      - source_labels: [__meta_kubernetes_pod_name]
        target_label: pod
      - source_labels: [__meta_kubernetes_pod_node_name]
        target_label: node
  - job_name: prometheus
    static_configs:
      - targets: ["localhost:9090"]
{{- end }}
