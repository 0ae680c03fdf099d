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
{{- /* On the data volume, beside dead-letter/: a spill outlives container restarts
and, on a claim per pod, the pod; the pod that wrote it replays it. */}}
{{- define "ad-event-processor.spillDir" -}}/app/data/spill{{- end }}
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
The stores of database.type, in the order given, as a JSON list: a string (one
name, or comma-separated `mongodb,redis`) or a YAML list. An unknown, empty or
repeated name fails the render (the schema checks only the list form's names:
its messages cannot name the culprit in a comma-separated string).
Usage: include "ad-event-processor.storeTypes" . | fromJsonArray
*/}}
{{- define "ad-event-processor.storeTypes" -}}
{{- $given := .Values.database.type }}
{{- $names := list }}
{{- if kindIs "string" $given }}
{{- $names = splitList "," $given }}
{{- else if kindIs "slice" $given }}
{{- $names = $given }}
{{- end }}
{{- $shown := join "," $names }}
{{- $known := list "file" "redis" "mongodb" "kafka" }}
{{- $types := list }}
{{- range $names }}
{{- $name := toString . | trim }}
{{- if not $name }}
{{- fail (printf "database.type=%s: an empty store name; give one of %s, several comma-separated (mongodb,redis) or a YAML list" $shown (join ", " $known)) }}
{{- end }}
{{- if not (has $name $known) }}
{{- fail (printf "database.type=%s: %q is not a store; known: %s" $shown $name (join ", " $known)) }}
{{- end }}
{{- if has $name $types }}
{{- fail (printf "database.type=%s: %s is listed twice; every listed store receives every event once" $shown $name) }}
{{- end }}
{{- $types = append $types $name }}
{{- end }}
{{- if not $types }}
{{- fail (printf "database.type: name at least one store of %s" (join ", " $known)) }}
{{- end }}
{{- toJson $types }}
{{- end }}

{{/*
database.type as the server reads it (AEP_DATABASE_TYPE): the stores comma-joined.
*/}}
{{- define "ad-event-processor.databaseType" -}}
{{- include "ad-event-processor.storeTypes" . | fromJsonArray | join "," }}
{{- end }}

{{/*
"true" when database.type lists the store given, else "".
Usage: include "ad-event-processor.usesStore" (list . "redis")
*/}}
{{- define "ad-event-processor.usesStore" -}}
{{- if has (index . 1) (include "ad-event-processor.storeTypes" (index . 0) | fromJsonArray) }}true{{ end }}
{{- end }}

{{/*
How a refusal about one listed store starts: "database.type=redis" for one
store, "database.type=mongodb,redis lists redis" for several.
Usage: include "ad-event-processor.storeContext" (list . "redis")
*/}}
{{- define "ad-event-processor.storeContext" -}}
{{- $types := include "ad-event-processor.storeTypes" (index . 0) | fromJsonArray }}
{{- if eq (len $types) 1 }}
{{- printf "database.type=%s" (index . 1) }}
{{- else }}
{{- printf "database.type=%s lists %s" (join "," $types) (index . 1) }}
{{- end }}
{{- end }}

{{/*
The spill policy the server will run with: AEP_SPILL_POLICY in env wins over
config.spill.policy (default auto).
*/}}
{{- define "ad-event-processor.spillPolicy" -}}
{{- $policy := "auto" }}
{{- with .Values.config.spill }}{{ with .policy }}{{ $policy = . }}{{ end }}{{ end }}
{{- range .Values.env }}
{{- if and (eq .name "AEP_SPILL_POLICY") (hasKey . "value") }}{{ $policy = .value }}{{ end }}
{{- end }}
{{- $policy }}
{{- end }}

{{/*
"true" when a full lane spills to the data volume (spill.policy always, or
auto with several stores), else "".
*/}}
{{- define "ad-event-processor.spills" -}}
{{- $policy := include "ad-event-processor.spillPolicy" . }}
{{- $types := include "ad-event-processor.storeTypes" . | fromJsonArray }}
{{- if or (eq $policy "always") (and (eq $policy "auto") (gt (len $types) 1)) }}true{{ end }}
{{- end }}

{{/*
spill.maxBytes (a Kubernetes quantity) in bytes, as the integer
AEP_SPILL_MAX_BYTES takes (the server reads 1GiB, not Kubernetes' 1Gi).
*/}}
{{- define "ad-event-processor.spillMaxBytes" -}}
{{- $bytes := include "ad-event-processor.quantityBytes" .Values.spill.maxBytes | float64 | int64 }}
{{- if lt $bytes 4096 }}
{{- fail (printf "spill.maxBytes (%s) is below the server's least spill, 4Ki" .Values.spill.maxBytes) }}
{{- end }}
{{- $bytes }}
{{- end }}

{{/*
Environment variables the chart sets on the server container; the same names
under env are refused (the chart's value and yours would both be in the pod).
*/}}
{{- define "ad-event-processor.chartOwnedEnv" -}}
AEP_DATABASE_TYPE: database.type
AEP_SPILL_DIR: persistence (the spill is on the data volume)
AEP_SPILL_MAX_BYTES: spill.maxBytes
AEP_DATABASE_REDIS_CLUSTER: externalRedis.cluster
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
spill.dir: persistence (the spill is on the data volume)
spill.max_bytes: spill.maxBytes
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
{{- $database := dict "type" (include "ad-event-processor.databaseType" .) "file" (dict "dir" (printf "%s/events" $dataDir)) }}
{{- if include "ad-event-processor.usesStore" (list . "redis") }}
{{- if .Values.redis.enabled }}
{{- $_ := set $database "redis" (dict "url" (printf "redis://%s:6379/0" (include "redis.fullname" .Subcharts.redis))) }}
{{- else if .Values.externalRedis.url }}
{{- $_ := set $database "redis" (dict "url" .Values.externalRedis.url) }}
{{- else if not .Values.externalRedis.existingSecret }}
{{- fail (printf "%s: set redis.enabled=true (a bundled Redis), or externalRedis.url or externalRedis.existingSecret" (include "ad-event-processor.storeContext" (list . "redis"))) }}
{{- end }}
{{- end }}
{{- if include "ad-event-processor.usesStore" (list . "mongodb") }}
{{- if .Values.mongodb.enabled }}
{{- $_ := set $database "mongodb" (dict "uri" (printf "mongodb://%s:27017" (include "mongodb.fullname" .Subcharts.mongodb)) "database" .Subcharts.mongodb.Values.database) }}
{{- else if or .Values.externalMongodb.uri .Values.externalMongodb.existingSecret }}
{{- $mongodb := dict "database" .Values.externalMongodb.database }}
{{- if .Values.externalMongodb.uri }}
{{- $_ := set $mongodb "uri" .Values.externalMongodb.uri }}
{{- end }}
{{- $_ := set $database "mongodb" $mongodb }}
{{- else }}
{{- fail (printf "%s: set mongodb.enabled=true (a bundled MongoDB), or externalMongodb.uri or externalMongodb.existingSecret" (include "ad-event-processor.storeContext" (list . "mongodb"))) }}
{{- end }}
{{- end }}
{{- if include "ad-event-processor.usesStore" (list . "kafka") }}
{{- $externalKafka := .Values.externalKafka }}
{{- if not $externalKafka.bootstrapServers }}
{{- fail (printf "%s: set externalKafka.bootstrapServers (host:port of your brokers; no Kafka is bundled)" (include "ad-event-processor.storeContext" (list . "kafka"))) }}
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
  "spill" (dict "dir" (include "ad-event-processor.spillDir" .) "max_bytes" (include "ad-event-processor.spillMaxBytes" . | int64))
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
The spill on the data volume: what the volume must hold, and who may share it.
Every listed store has a spill of up to spill.maxBytes (`<spill dir>/<store>/`),
beside the dead letters (persistence.deadLetterHeadroom). Checked only when the
server spills (ad-event-processor.spills).
*/}}
{{- define "ad-event-processor.validateSpill" -}}
{{- if include "ad-event-processor.spills" . }}
{{- $persistence := .Values.persistence }}
{{- if and $persistence.enabled (eq $persistence.claim "shared") }}
{{- fail "the spill (several stores, or config.spill.policy=always) is replayed by the pod that wrote it, but persistence.claim=shared gives every pod the same directory (a rollout runs old and new pods side by side): use persistence.claim=perPod (a claim per pod, the default) or persistence.enabled=false (an emptyDir), or set config.spill.policy=never" }}
{{- end }}
{{- $types := include "ad-event-processor.storeTypes" . | fromJsonArray }}
{{- $spill := mulf (len $types) (include "ad-event-processor.spillMaxBytes" . | float64) }}
{{- $needed := addf $spill (include "ad-event-processor.quantityBytes" $persistence.deadLetterHeadroom | float64) }}
{{- $key := "persistence.size" }}
{{- $size := $persistence.size }}
{{- if not $persistence.enabled }}
{{- $key = "persistence.emptyDir.sizeLimit" }}
{{- $size = $persistence.emptyDir.sizeLimit }}
{{- end }}
{{- if and $size (lt (include "ad-event-processor.quantityBytes" $size | float64) $needed) }}
{{- fail (printf "%s (%s) must hold the spill of each of the %d listed stores (spill.maxBytes %s each) plus persistence.deadLetterHeadroom (%s): at least %.0fMi. Raise %s, or lower spill.maxBytes, or set config.spill.policy=never" $key $size (len $types) .Values.spill.maxBytes $persistence.deadLetterHeadroom (ceil (divf $needed 1048576)) $key) }}
{{- end }}
{{- end }}
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
{{- $databaseType := include "ad-event-processor.databaseType" . }}
{{- if and .Values.redis.enabled (not (include "ad-event-processor.usesStore" (list . "redis"))) }}
{{- fail (printf "redis.enabled deploys a Redis that the server does not use (database.type=%s): set redis.enabled=false, or list redis in database.type" $databaseType) }}
{{- end }}
{{- if and .Values.mongodb.enabled (not (include "ad-event-processor.usesStore" (list . "mongodb"))) }}
{{- fail (printf "mongodb.enabled deploys a MongoDB that the server does not use (database.type=%s): set mongodb.enabled=false, or list mongodb in database.type" $databaseType) }}
{{- end }}
{{- if and .Values.externalRedis.cluster (include "ad-event-processor.usesStore" (list . "redis")) .Values.redis.enabled }}
{{- fail "externalRedis.cluster describes a Redis Cluster of yours, but redis.enabled deploys the bundled Redis (one node, not a cluster): set redis.enabled=false and externalRedis.url or externalRedis.existingSecret" }}
{{- end }}
{{- $ownedEnv := include "ad-event-processor.chartOwnedEnv" . | fromYaml }}
{{- range .Values.env }}
{{- if hasKey $ownedEnv .name }}
{{- fail (printf "env: %s is set by the chart; set %s instead" .name (index $ownedEnv .name)) }}
{{- end }}
{{- end }}
{{- include "ad-event-processor.validateSpill" . }}
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
