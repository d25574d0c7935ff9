{{/*
Names, labels and shared values of the contextiq chart. Every helper is namespaced
"contextiq." so that a parent chart can include this one without clashes.
*/}}

{{/* The chart name, or nameOverride. */}}
{{- define "contextiq.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
The release-scoped base name of every resource (fullnameOverride, else "<release>-<chart>",
else just the release name when it already contains the chart name). Kept at 52 characters so
that "<fullname>-extraction" still fits the 63-character limit of a Service name.
*/}}
{{- define "contextiq.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 52 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 52 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 52 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{/* "<chart>-<version>" for the helm.sh/chart label. */}}
{{- define "contextiq.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* The version label: the image tag, or the chart's appVersion. */}}
{{- define "contextiq.version" -}}
{{- default .Chart.AppVersion .Values.image.tag | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Labels that select the release's pods (never change them after install). */}}
{{- define "contextiq.selectorLabels" -}}
app.kubernetes.io/name: {{ include "contextiq.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/* The recommended labels, on every resource. */}}
{{- define "contextiq.labels" -}}
helm.sh/chart: {{ include "contextiq.chart" . }}
{{ include "contextiq.selectorLabels" . }}
app.kubernetes.io/version: {{ include "contextiq.version" . | quote }}
app.kubernetes.io/part-of: contextiq
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/*
Selector labels of one component. Call with (dict "ctx" $ "component" "sessions").
*/}}
{{- define "contextiq.componentSelectorLabels" -}}
{{ include "contextiq.selectorLabels" .ctx }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{/* Recommended labels of one component. Call with (dict "ctx" $ "component" "sessions"). */}}
{{- define "contextiq.componentLabels" -}}
{{ include "contextiq.labels" .ctx }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{/* Name of one component's resources: "<fullname>-<component>". */}}
{{- define "contextiq.componentName" -}}
{{- printf "%s-%s" (include "contextiq.fullname" .ctx) .component }}
{{- end }}

{{/* The ServiceAccount the pods run as. */}}
{{- define "contextiq.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "contextiq.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* The image reference: repository@digest when a digest is set, else repository:tag. */}}
{{- define "contextiq.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}
{{- end }}

{{/* In-cluster gRPC address of a component: "<service>.<namespace>.svc:<port>". */}}
{{- define "contextiq.grpcAddress" -}}
{{- $values := index .ctx.Values .component }}
{{- printf "%s.%s.svc:%v" (include "contextiq.componentName" .) .ctx.Release.Namespace $values.service.port }}
{{- end }}

{{/* Name of the Secret the chart renders (when secrets.existingSecret is empty). */}}
{{- define "contextiq.secretName" -}}
{{- default (include "contextiq.fullname" .) .Values.secrets.existingSecret }}
{{- end }}

{{/*
Where DATABASE_URL comes from, as a secretKeyRef body: postgres.existingSecret, else
secrets.existingSecret, else the chart's Secret (filled from postgres.url).
*/}}
{{- define "contextiq.databaseUrlRef" -}}
{{- if .Values.postgres.existingSecret }}
name: {{ .Values.postgres.existingSecret }}
key: {{ .Values.postgres.existingSecretKey }}
{{- else if .Values.secrets.existingSecret }}
name: {{ .Values.secrets.existingSecret }}
key: {{ .Values.postgres.existingSecretKey }}
{{- else }}
{{- if not .Values.postgres.url }}
{{- fail "postgres.url is empty: set postgres.url or postgres.existingSecret (a Secret holding the whole URL)" }}
{{- end }}
name: {{ include "contextiq.fullname" . }}
key: DATABASE_URL
{{- end }}
{{- end }}

{{/*
The LLM provider key names (environment variable names, e.g. OPENAI_API_KEY) the extraction
and memory pods read from the Secret.
*/}}
{{- define "contextiq.llmKeyNames" -}}
{{- if .Values.secrets.existingSecret }}
{{- toYaml .Values.secrets.existingSecretLlmKeys }}
{{- else }}
{{- toYaml (keys .Values.secrets.llmApiKeys | sortAlpha) }}
{{- end }}
{{- end }}

{{/*
Secret-backed environment variables (always secretKeyRef, never the ConfigMap).
Call with (dict "ctx" $ "needs" (list "database" "nats" "jwt" "bootstrap" "llm")).
With an existing Secret the optional keys are referenced with optional: true, so a Secret
without them still works; with the chart's Secret only the values that are set are referenced.
*/}}
{{- define "contextiq.secretEnv" -}}
{{- $ctx := .ctx }}
{{- $v := $ctx.Values }}
{{- $existing := $v.secrets.existingSecret }}
{{- $secret := include "contextiq.secretName" $ctx }}
{{- if has "database" .needs }}
- name: DATABASE_URL
  valueFrom:
    secretKeyRef:
      {{- include "contextiq.databaseUrlRef" $ctx | trim | nindent 6 }}
{{- end }}
{{- if and (has "nats" .needs) $v.nats.existingSecret }}
- name: NATS_URL
  valueFrom:
    secretKeyRef:
      name: {{ $v.nats.existingSecret }}
      key: {{ $v.nats.existingSecretKey }}
{{- end }}
{{- if has "jwt" .needs }}
{{- if $existing }}
- name: CONTEXTIQ_JWT_SECRET
  valueFrom:
    secretKeyRef:
      name: {{ $existing }}
      key: {{ $v.secrets.existingSecretKeys.jwtSecret }}
      optional: true
{{- else }}
- name: CONTEXTIQ_JWT_SECRET
  valueFrom:
    secretKeyRef:
      name: {{ $secret }}
      key: CONTEXTIQ_JWT_SECRET
{{- end }}
{{- end }}
{{- if has "bootstrap" .needs }}
{{- if $existing }}
- name: CONTEXTIQ_BOOTSTRAP_API_KEY
  valueFrom:
    secretKeyRef:
      name: {{ $existing }}
      key: {{ $v.secrets.existingSecretKeys.bootstrapApiKey }}
      optional: true
{{- else if $v.secrets.bootstrapApiKey }}
- name: CONTEXTIQ_BOOTSTRAP_API_KEY
  valueFrom:
    secretKeyRef:
      name: {{ $secret }}
      key: CONTEXTIQ_BOOTSTRAP_API_KEY
{{- end }}
{{- end }}
{{- if has "llm" .needs }}
{{- range (include "contextiq.llmKeyNames" $ctx | fromYamlArray) }}
- name: {{ . }}
  valueFrom:
    secretKeyRef:
      name: {{ $secret }}
      key: {{ . }}
{{- end }}
{{- end }}
{{- end }}

{{/* Pod annotations that roll the pods when the configuration or the chart's Secret changes. */}}
{{- define "contextiq.checksumAnnotations" -}}
checksum/config: {{ include (print .Template.BasePath "/configmap.yaml") . | sha256sum }}
{{- if not .Values.secrets.existingSecret }}
checksum/secret: {{ include (print .Template.BasePath "/secret.yaml") . | sha256sum }}
{{- end }}
{{- end }}

{{/* The writable /tmp every container gets (the root filesystem is read-only). */}}
{{- define "contextiq.tmpVolume" -}}
- name: tmp
  {{- if .Values.tmpVolume.sizeLimit }}
  emptyDir:
    sizeLimit: {{ .Values.tmpVolume.sizeLimit }}
  {{- else }}
  emptyDir: {}
  {{- end }}
{{- end }}

{{/*
The JWT HS256 secret of the chart's Secret: secrets.jwtSecret when set; else the one the
release's Secret already holds (kept across upgrades); else a new random one. The extraction
worker signs its per-tenant service tokens with it, so the chart never renders without one.
*/}}
{{- define "contextiq.jwtSecret" -}}
{{- if .Values.secrets.jwtSecret }}
{{- .Values.secrets.jwtSecret }}
{{- else }}
{{- $current := lookup "v1" "Secret" .Release.Namespace (include "contextiq.fullname" .) }}
{{- if and $current $current.data (hasKey $current.data "CONTEXTIQ_JWT_SECRET") }}
{{- index $current.data "CONTEXTIQ_JWT_SECRET" | b64dec }}
{{- else }}
{{- randAlphaNum 48 }}
{{- end }}
{{- end }}
{{- end }}
