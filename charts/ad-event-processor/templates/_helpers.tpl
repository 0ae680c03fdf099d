{{/*
Expand the name of the chart.
*/}}
{{- define "ad-event-processor.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Create a default fully qualified app name.
We truncate at 63 chars because some Kubernetes name fields are limited to this (by the DNS naming spec).
If release name contains chart name it will be used as a full name.
*/}}
{{- define "ad-event-processor.fullname" -}}
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
Name of a component of the chart: <fullname>-<component>, within 63 characters.
Usage: include "ad-event-processor.componentName" (list . "headless")
*/}}
{{- define "ad-event-processor.componentName" -}}
{{- $root := index . 0 }}
{{- $component := index . 1 }}
{{- printf "%s-%s" (include "ad-event-processor.fullname" $root | trunc (int (sub 62 (len $component)))) $component | trimSuffix "-" }}
{{- end }}

{{/*
Create chart name and version as used by the chart label.
*/}}
{{- define "ad-event-processor.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Common labels of the server's objects. The bundled Redis, MongoDB, Prometheus
and Grafana are subcharts (charts/) with labels of their own.
*/}}
{{- define "ad-event-processor.labels" -}}
{{ include "ad-event-processor.commonLabels" . }}
{{ include "ad-event-processor.selectorLabels" . }}
{{- end }}

{{- define "ad-event-processor.commonLabels" -}}
helm.sh/chart: {{ include "ad-event-processor.chart" . }}
{{- if .Chart.AppVersion }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
{{- end }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: {{ include "ad-event-processor.name" . }}
{{- end }}

{{/*
Selector labels of the server's pods. The component label keeps the helm test
pod out of the server's selectors; Prometheus finds the server pods by
instance and component alone (values.yaml, prometheus.scrapeConfigs).
*/}}
{{- define "ad-event-processor.selectorLabels" -}}
app.kubernetes.io/name: {{ include "ad-event-processor.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: server
{{- end }}

{{/*
Labels and selector labels of another component of this chart (the helm test pod).
Usage: include "ad-event-processor.componentLabels" (list . "test")
*/}}
{{- define "ad-event-processor.componentLabels" -}}
{{ include "ad-event-processor.commonLabels" (index . 0) }}
{{ include "ad-event-processor.componentSelectorLabels" . }}
{{- end }}

{{- define "ad-event-processor.componentSelectorLabels" -}}
app.kubernetes.io/name: {{ include "ad-event-processor.name" (index . 0) }}
app.kubernetes.io/instance: {{ (index . 0).Release.Name }}
app.kubernetes.io/component: {{ index . 1 }}
{{- end }}

{{/*
Create the name of the service account to use
*/}}
{{- define "ad-event-processor.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "ad-event-processor.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/*
The server image: repository@digest, or repository:tag (tag defaults to appVersion).
*/}}
{{- define "ad-event-processor.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}
{{- end }}

{{/*
Where the server keeps its files (a volume; the root filesystem is read-only).
*/}}
{{- define "ad-event-processor.dataDir" -}}/app/data{{- end }}
{{- define "ad-event-processor.configDir" -}}/etc/ad-event-processor{{- end }}
{{- define "ad-event-processor.walDir" -}}/app/wal{{- end }}
{{- define "ad-event-processor.tlsDir" -}}/etc/aep-tls{{- end }}
{{- define "ad-event-processor.authDir" -}}/etc/aep-auth{{- end }}
{{- define "ad-event-processor.clientTlsDir" -}}/etc/aep-client-tls{{- end }}
{{- define "ad-event-processor.kafkaCaDir" -}}/etc/aep-kafka-ca{{- end }}

{{/*
"true" when /app/data is on a claim per pod (persistence.claim=perPod), else "".
*/}}
{{- define "ad-event-processor.dataClaimPerPod" -}}
{{- if and .Values.persistence.enabled (eq .Values.persistence.claim "perPod") }}true{{ end }}
{{- end }}

{{/*
"true" when the write-ahead log is on a claim per pod (wal.persistence.type=pvc), else "".
*/}}
{{- define "ad-event-processor.walClaimPerPod" -}}
{{- if and .Values.wal.enabled (eq .Values.wal.persistence.type "pvc") }}true{{ end }}
{{- end }}

{{/*
"true" when the server runs as a StatefulSet (a claim per pod), else "".
*/}}
{{- define "ad-event-processor.statefulSet" -}}
{{- if or (include "ad-event-processor.dataClaimPerPod" .) (include "ad-event-processor.walClaimPerPod" .) }}true{{ end }}
{{- end }}

{{/*
The server StatefulSet's volumeClaimTemplates (a YAML list): "data" with
persistence.claim=perPod, "wal" with wal.persistence.type=pvc.
*/}}
{{- define "ad-event-processor.volumeClaimTemplates" -}}
{{- $claims := list }}
{{- if include "ad-event-processor.dataClaimPerPod" . }}
{{- $claims = append $claims (list "data" .Values.persistence) }}
{{- end }}
{{- if include "ad-event-processor.walClaimPerPod" . }}
{{- $claims = append $claims (list "wal" .Values.wal.persistence) }}
{{- end }}
{{- range $claim := $claims }}
{{- $persistence := index $claim 1 }}
- metadata:
    name: {{ index $claim 0 }}
    labels:
      {{- include "ad-event-processor.selectorLabels" $ | nindent 6 }}
  spec:
    accessModes:
      {{- toYaml $persistence.accessModes | nindent 6 }}
    {{- with $persistence.storageClass }}
    storageClassName: {{ . }}
    {{- end }}
    resources:
      requests:
        storage: {{ $persistence.size }}
{{- else }}
[]
{{- end }}
{{- end }}

{{/*
The server StatefulSet's persistentVolumeClaimRetentionPolicy. One StatefulSet
has one policy: with both claims per pod, their two values must agree.
*/}}
{{- define "ad-event-processor.claimRetentionPolicy" -}}
{{- $data := include "ad-event-processor.dataClaimPerPod" . }}
{{- $wal := include "ad-event-processor.walClaimPerPod" . }}
{{- if and $data $wal (ne (toYaml .Values.persistence.retentionPolicy) (toYaml .Values.wal.persistence.retentionPolicy)) }}
{{- fail (printf "persistence.retentionPolicy (%s) and wal.persistence.retentionPolicy (%s) differ: both claims belong to one StatefulSet, which has one persistentVolumeClaimRetentionPolicy; set them alike" (toJson .Values.persistence.retentionPolicy) (toJson .Values.wal.persistence.retentionPolicy)) }}
{{- end }}
{{- toYaml (ternary .Values.persistence.retentionPolicy .Values.wal.persistence.retentionPolicy (not (empty $data))) }}
{{- end }}

{{- define "ad-event-processor.workloadKind" -}}
{{- if include "ad-event-processor.statefulSet" . }}StatefulSet{{ else }}Deployment{{ end }}
{{- end }}

{{/*
The ack mode the server will run with: AEP_ACK_MODE in env wins over config.ack.mode.
*/}}
{{- define "ad-event-processor.ackMode" -}}
{{- $mode := "accepted" }}
{{- with .Values.config.ack }}{{ with .mode }}{{ $mode = . }}{{ end }}{{ end }}
{{- range .Values.env }}
{{- if and (eq .name "AEP_ACK_MODE") (hasKey . "value") }}{{ $mode = .value }}{{ end }}
{{- end }}
{{- $mode }}
{{- end }}

{{/*
Keys of the service configuration that the chart sets from other values; a
value for them under .Values.config is refused rather than silently replaced.
*/}}
{{- define "ad-event-processor.chartOwnedKeys" -}}
server.host: ports.grpc
server.port: ports.grpc
metrics.host: ports.metrics
metrics.port: ports.metrics
database.type: database.type
database.file.dir: persistence
database.redis.url: redis.enabled or externalRedis
database.mongodb.uri: mongodb.enabled or externalMongodb
database.mongodb.database: mongodb.database or externalMongodb.database
database.kafka.bootstrap_servers: externalKafka.bootstrapServers
database.kafka.topic: externalKafka.topic
database.kafka.security_protocol: externalKafka.securityProtocol
database.kafka.sasl_mechanism: externalKafka.sasl.mechanism
database.kafka.sasl_username: externalKafka.sasl.username
database.kafka.sasl_password: externalKafka.sasl.existingSecret
database.kafka.ssl_cafile: externalKafka.tls.caSecret
dead_letter.dir: persistence
shutdown.grace_period: shutdownGracePeriodSeconds
wal.dir: wal.enabled
tls.cert_file: tls.enabled and tls.secretName
tls.key_file: tls.enabled and tls.secretName
tls.client_ca_file: tls.clientAuth
auth.api_keys_file: auth.enabled, auth.secretName and auth.secretKey
auth.default_rate_limit_rps: auth.defaultRateLimitRps
{{- end }}

{{/*
The service configuration file (YAML): .Values.config plus what the chart sets.
*/}}
{{- define "ad-event-processor.config" -}}
{{- $owned := include "ad-event-processor.chartOwnedKeys" . | fromYaml }}
{{- range $key, $from := $owned }}
{{- $node := $.Values.config }}
{{- $found := true }}
{{- range $part := splitList "." $key }}
{{- if and $found (kindIs "map" $node) (hasKey $node $part) }}
{{- $node = index $node $part }}
{{- else }}
{{- $found = false }}
{{- end }}
{{- end }}
{{- if $found }}
{{- fail (printf "config.%s is set by the chart; set %s instead" $key $from) }}
{{- end }}
{{- end }}
{{- $dataDir := include "ad-event-processor.dataDir" . }}
{{- $database := dict "type" .Values.database.type "file" (dict "dir" (printf "%s/events" $dataDir)) }}
{{- if eq .Values.database.type "redis" }}
{{- if .Values.redis.enabled }}
{{- $_ := set $database "redis" (dict "url" (printf "redis://%s:6379/0" (include "redis.fullname" .Subcharts.redis))) }}
{{- else if .Values.externalRedis.url }}
{{- $_ := set $database "redis" (dict "url" .Values.externalRedis.url) }}
{{- else if not .Values.externalRedis.existingSecret }}
{{- fail "database.type=redis: set redis.enabled=true (a bundled Redis), or externalRedis.url or externalRedis.existingSecret" }}
{{- end }}
{{- end }}
{{- if eq .Values.database.type "mongodb" }}
{{- if .Values.mongodb.enabled }}
{{- $_ := set $database "mongodb" (dict "uri" (printf "mongodb://%s:27017" (include "mongodb.fullname" .Subcharts.mongodb)) "database" .Subcharts.mongodb.Values.database) }}
{{- else if or .Values.externalMongodb.uri .Values.externalMongodb.existingSecret }}
{{- $mongodb := dict "database" .Values.externalMongodb.database }}
{{- if .Values.externalMongodb.uri }}
{{- $_ := set $mongodb "uri" .Values.externalMongodb.uri }}
{{- end }}
{{- $_ := set $database "mongodb" $mongodb }}
{{- else }}
{{- fail "database.type=mongodb: set mongodb.enabled=true (a bundled MongoDB), or externalMongodb.uri or externalMongodb.existingSecret" }}
{{- end }}
{{- end }}
{{- if eq .Values.database.type "kafka" }}
{{- $externalKafka := .Values.externalKafka }}
{{- if not $externalKafka.bootstrapServers }}
{{- fail "database.type=kafka: set externalKafka.bootstrapServers (host:port of your brokers; no Kafka is bundled)" }}
{{- end }}
{{- $kafka := dict "bootstrap_servers" $externalKafka.bootstrapServers "topic" $externalKafka.topic "security_protocol" $externalKafka.securityProtocol }}
{{- if hasPrefix "SASL_" $externalKafka.securityProtocol }}
{{- if not (and $externalKafka.sasl.username $externalKafka.sasl.existingSecret) }}
{{- fail (printf "externalKafka.securityProtocol=%s: set externalKafka.sasl.username and externalKafka.sasl.existingSecret (the Secret holding the password)" $externalKafka.securityProtocol) }}
{{- end }}
{{- $_ := set $kafka "sasl_mechanism" $externalKafka.sasl.mechanism }}
{{- $_ := set $kafka "sasl_username" $externalKafka.sasl.username }}
{{- end }}
{{- if $externalKafka.tls.caSecret }}
{{- if not (hasSuffix "SSL" $externalKafka.securityProtocol) }}
{{- fail (printf "externalKafka.tls.caSecret needs externalKafka.securityProtocol SSL or SASL_SSL, not %s" $externalKafka.securityProtocol) }}
{{- end }}
{{- $_ := set $kafka "ssl_cafile" (printf "%s/ca.crt" (include "ad-event-processor.kafkaCaDir" .)) }}
{{- end }}
{{- $_ := set $database "kafka" $kafka }}
{{- end }}
{{- $chart := dict
  "server" (dict "host" "0.0.0.0" "port" .Values.ports.grpc)
  "metrics" (dict "host" "0.0.0.0" "port" .Values.ports.metrics)
  "database" $database
  "dead_letter" (dict "dir" (printf "%s/dead-letter" $dataDir))
  "shutdown" (dict "grace_period" (printf "%ds" (int .Values.shutdownGracePeriodSeconds)))
}}
{{- if .Values.wal.enabled }}
{{- $_ := set $chart "wal" (dict "dir" (include "ad-event-processor.walDir" .)) }}
{{- end }}
{{- if .Values.tls.enabled }}
{{- $tlsDir := include "ad-event-processor.tlsDir" . }}
{{- $tls := dict "cert_file" (printf "%s/tls.crt" $tlsDir) "key_file" (printf "%s/tls.key" $tlsDir) }}
{{- if .Values.tls.clientAuth }}
{{- $_ := set $tls "client_ca_file" (printf "%s/ca.crt" $tlsDir) }}
{{- end }}
{{- $_ := set $chart "tls" $tls }}
{{- end }}
{{- if .Values.auth.enabled }}
{{- $_ := set $chart "auth" (dict "api_keys_file" (printf "%s/api-keys.yaml" (include "ad-event-processor.authDir" .)) "default_rate_limit_rps" .Values.auth.defaultRateLimitRps) }}
{{- end }}
{{- mergeOverwrite (deepCopy .Values.config) $chart | toYaml }}
{{- end }}

{{/*
Checks across values that the schema cannot express.
*/}}
{{- define "ad-event-processor.validate" -}}
{{- if le (int .Values.terminationGracePeriodSeconds) (add .Values.preStopSleepSeconds .Values.shutdownGracePeriodSeconds | int) }}
{{- fail (printf "terminationGracePeriodSeconds (%d) must exceed preStopSleepSeconds + shutdownGracePeriodSeconds (%d), or the kubelet kills the server before it has drained" (int .Values.terminationGracePeriodSeconds) (add .Values.preStopSleepSeconds .Values.shutdownGracePeriodSeconds | int)) }}
{{- end }}
{{- if and .Values.persistence.enabled (eq .Values.persistence.claim "shared") (not .Values.persistence.existingClaim) (not (has "ReadWriteMany" .Values.persistence.accessModes)) (or .Values.autoscaling.enabled (gt (int .Values.replicaCount) 1)) }}
{{- fail "persistence.claim=shared with more than one replica (or autoscaling) needs persistence.accessModes [ReadWriteMany] (or an existingClaim that allows it): replicas share the claim. Or persistence.claim=perPod: a claim per pod" }}
{{- end }}
{{- if and .Values.persistence.enabled .Values.persistence.existingClaim (ne .Values.persistence.claim "shared") }}
{{- fail "persistence.existingClaim is one claim for every replica: set persistence.claim=shared with it" }}
{{- end }}
{{- if and .Values.redis.enabled (ne .Values.database.type "redis") }}
{{- fail (printf "redis.enabled deploys a Redis that the server does not use (database.type=%s): set redis.enabled=false" .Values.database.type) }}
{{- end }}
{{- if and .Values.mongodb.enabled (ne .Values.database.type "mongodb") }}
{{- fail (printf "mongodb.enabled deploys a MongoDB that the server does not use (database.type=%s): set mongodb.enabled=false" .Values.database.type) }}
{{- end }}
{{- if and .Values.grafana.enabled (not .Values.grafana.prometheusUrl) }}
{{- if not .Values.prometheus.enabled }}
{{- fail "grafana.enabled needs prometheus.enabled=true or grafana.prometheusUrl (e.g. http://prometheus-operated.monitoring.svc:9090)" }}
{{- end }}
{{- $bundled := printf "http://%s:9090" (include "prometheus.fullname" .Subcharts.prometheus) }}
{{- if ne (include "grafana.prometheusUrl" .Subcharts.grafana) $bundled }}
{{- fail (printf "grafana.prometheusUrl: the bundled Prometheus is %s (prometheus.nameOverride/fullnameOverride): set grafana.prometheusUrl to it" $bundled) }}
{{- end }}
{{- end }}
{{- $_ := include "ad-event-processor.claimRetentionPolicy" . }}
{{- if and .Values.autoscaling.enabled (not (or .Values.autoscaling.targetCPUUtilizationPercentage .Values.autoscaling.targetMemoryUtilizationPercentage .Values.autoscaling.customMetric.enabled)) }}
{{- fail "autoscaling.enabled needs at least one metric: targetCPUUtilizationPercentage, targetMemoryUtilizationPercentage or customMetric" }}
{{- end }}
{{- if and .Values.autoscaling.enabled (gt (int .Values.autoscaling.minReplicas) (int .Values.autoscaling.maxReplicas)) }}
{{- fail "autoscaling.minReplicas must not exceed autoscaling.maxReplicas" }}
{{- end }}
{{- if and .Values.tls.enabled (not .Values.tls.secretName) }}
{{- fail "tls.enabled needs tls.secretName: a kubernetes.io/tls Secret with tls.crt, tls.key (and ca.crt)" }}
{{- end }}
{{- if and .Values.tls.clientAuth (not .Values.tls.enabled) }}
{{- fail "tls.clientAuth (mTLS) needs tls.enabled=true" }}
{{- end }}
{{- if and .Values.auth.enabled (not .Values.auth.secretName) }}
{{- fail "auth.enabled needs auth.secretName: a Secret holding the API-keys YAML file under auth.secretKey" }}
{{- end }}
{{- if and .Values.tests.enabled .Values.auth.enabled (not .Values.tests.apiKeySecretName) }}
{{- fail "auth.enabled: the helm test pod needs an API key with the read role: set tests.apiKeySecretName (and tests.apiKeySecretKey), or tests.enabled=false" }}
{{- end }}
{{- if and .Values.tests.enabled .Values.tls.clientAuth (not .Values.tests.clientCertSecretName) }}
{{- fail "tls.clientAuth: the helm test pod needs a client certificate: set tests.clientCertSecretName (a kubernetes.io/tls Secret signed by ca.crt), or tests.enabled=false" }}
{{- end }}
{{- if and (eq (include "ad-event-processor.ackMode" .) "durable") (not .Values.wal.enabled) }}
{{- fail "ack.mode durable needs the write-ahead log: set wal.enabled=true (wal.persistence.type=pvc keeps it across pod loss)" }}
{{- end }}
{{- end }}
