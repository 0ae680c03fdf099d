{{/*
Upgrades that would change a StatefulSet's volumeClaimTemplates.

Kubernetes refuses any change to a StatefulSet's spec other than replicas,
ordinals, template, updateStrategy, persistentVolumeClaimRetentionPolicy and
minReadySeconds, so `helm upgrade --set redis.persistence.size=16Gi` would fail
half-way with "StatefulSet ... spec: Forbidden". The chart compares the claim
templates it renders with the live StatefulSet (lookup: empty with `helm
template` and on install) and fails first, saying how to resize.
*/}}

{{/*
The StatefulSets of this release that carry claim templates: a YAML list of
{name, claims (the volumeClaimTemplates it renders), values (claim name -> the
values key that sets it)}.
*/}}
{{- define "ad-event-processor.claimStatefulSets" -}}
{{- $sets := list }}
{{- if include "ad-event-processor.statefulSet" . }}
{{- $sets = append $sets (dict
  "name" (include "ad-event-processor.fullname" .)
  "claims" (include "ad-event-processor.volumeClaimTemplates" . | fromYamlArray)
  "values" (dict "data" "persistence" "wal" "wal.persistence")) }}
{{- end }}
{{- range $store := list "redis" "mongodb" }}
{{- if (index $.Values $store).enabled }}
{{- $context := index $.Subcharts $store }}
{{- $sets = append $sets (dict
  "name" (include (printf "%s.fullname" $store) $context)
  "claims" (include (printf "%s.volumeClaimTemplates" $store) $context | fromYamlArray)
  "values" (dict "data" (printf "%s.persistence" $store))) }}
{{- end }}
{{- end }}
{{- toYaml $sets }}
{{- end }}

{{/*
A storage quantity in bytes (a float, as text), for comparing "8Gi" with the
"8192Mi" or "8589934592" another spelling (or the API server) may give.
*/}}
{{- define "ad-event-processor.quantityBytes" -}}
{{- $quantity := toString . }}
{{- $number := regexFind "^[0-9]+(\\.[0-9]+)?" $quantity }}
{{- $suffix := trimPrefix $number $quantity }}
{{- $multipliers := dict
  "" "1" "k" "1e3" "M" "1e6" "G" "1e9" "T" "1e12" "P" "1e15" "E" "1e18"
  "Ki" "1024" "Mi" "1048576" "Gi" "1073741824" "Ti" "1099511627776"
  "Pi" "1125899906842624" "Ei" "1152921504606846976" }}
{{- if or (not $number) (not (hasKey $multipliers $suffix)) }}
{{- fail (printf "cannot read the storage quantity %q" $quantity) }}
{{- end }}
{{- mulf (float64 $number) (float64 (index $multipliers $suffix)) }}
{{- end }}

{{/*
Fails when the live StatefulSet's claim templates differ from the ones this
render asks for. Usage:
  include "ad-event-processor.claimTemplatesGuard" (dict "live" $live "set" $set "namespace" $ns)
with $live the lookup result (empty: nothing to compare) and $set one entry of
"ad-event-processor.claimStatefulSets".
*/}}
{{- define "ad-event-processor.claimTemplatesGuard" -}}
{{- $set := .set }}
{{- $ns := .namespace }}
{{- if and .live .live.spec }}
{{- $live := dict }}
{{- range .live.spec.volumeClaimTemplates | default list }}
{{- $_ := set $live .metadata.name . }}
{{- end }}
{{- $wanted := dict }}
{{- range $set.claims }}
{{- $_ := set $wanted .metadata.name . }}
{{- end }}
{{- $orphan := printf "kubectl -n %s delete statefulset %s --cascade=orphan" $ns $set.name }}
{{- if ne (keys $live | sortAlpha | join ",") (keys $wanted | sortAlpha | join ",") }}
{{- fail (printf "the StatefulSet %s has the claim templates [%s] and this upgrade asks for [%s] (%s): Kubernetes refuses to change a StatefulSet's volumeClaimTemplates. Keep the values that made them, or delete the StatefulSet first without its pods (%s) and upgrade again: the new one adopts the running pods, which get the new claims as they are recreated. See \"Resizing a claim\" in the chart README" $set.name (keys $live | sortAlpha | join ", ") (keys $wanted | sortAlpha | join ", ") (values $set.values | sortAlpha | join ", ") $orphan) }}
{{- end }}
{{- range $name, $claim := $wanted }}
{{- $old := index $live $name }}
{{- $key := index $set.values $name }}
{{- $oldSize := $old.spec.resources.requests.storage }}
{{- $newSize := $claim.spec.resources.requests.storage }}
{{- if ne (include "ad-event-processor.quantityBytes" $oldSize) (include "ad-event-processor.quantityBytes" $newSize) }}
{{- fail (printf "%s.size: the StatefulSet %s has its %q claims at %v and this upgrade asks for %v, but Kubernetes refuses to change a StatefulSet's volumeClaimTemplates. To resize: keep %s.size=%v; expand each claim %s-%s-<n> (kubectl -n %s patch pvc %s-%s-0 -p '{\"spec\":{\"resources\":{\"requests\":{\"storage\":\"%v\"}}}}'; its StorageClass needs allowVolumeExpansion); then %s (the pods keep running) and upgrade with %s.size=%v. See \"Resizing a claim\" in the chart README" $key $set.name $name $oldSize $newSize $key $oldSize $name $set.name $ns $name $set.name $newSize $orphan $key $newSize) }}
{{- end }}
{{- $oldClass := $old.spec.storageClassName | default "" }}
{{- $newClass := $claim.spec.storageClassName | default "" }}
{{- if ne $oldClass $newClass }}
{{- fail (printf "%s.storageClass: the StatefulSet %s has its %q claims in StorageClass %q and this upgrade asks for %q, but Kubernetes refuses to change a StatefulSet's volumeClaimTemplates (and existing claims keep their class). Keep %s.storageClass=%q, or %s and upgrade again (new claims only get the new class). See \"Resizing a claim\" in the chart README" $key $set.name $name $oldClass $newClass $key $oldClass $orphan) }}
{{- end }}
{{- if ne (toJson $old.spec.accessModes) (toJson $claim.spec.accessModes) }}
{{- fail (printf "%s.accessModes: the StatefulSet %s has its %q claims with %s and this upgrade asks for %s, but Kubernetes refuses to change a StatefulSet's volumeClaimTemplates. Keep %s.accessModes, or %s and upgrade again. See \"Resizing a claim\" in the chart README" $key $set.name $name (toJson $old.spec.accessModes) (toJson $claim.spec.accessModes) $key $orphan) }}
{{- end }}
{{- end }}
{{- end }}
{{- end }}
