{{/*
The resources every component (sessions, memory, extraction, gateway) has, as named templates.
Each <component>-<kind>.yaml file renders exactly one of them, so every template file holds
one resource. Arguments, as a dict:
  ctx            the root context ($)
  component      "sessions" | "memory" | "extraction" | "gateway" (also the values key)
  module         the Python module the container runs (python -m <module>)
  healthService  gRPC components: the name the startup and readiness probes ask the standard
                 health service about (liveness asks about "", the whole process)
  http           true for the REST gateway (HTTP port and probes instead of gRPC)
  needs          which Secret-backed variables the container gets (see contextiq.secretEnv)
*/}}

{{- define "contextiq.deployment" -}}
{{- $ctx := .ctx }}
{{- $root := $ctx.Values }}
{{- $v := index $root .component }}
{{- $names := dict "ctx" $ctx "component" .component }}
{{- $portName := ternary "http" "grpc" (default false .http) }}
{{- $port := index $root.containerPorts $portName }}
apiVersion: apps/v1
kind: Deployment
metadata:
  name: {{ include "contextiq.componentName" $names }}
  namespace: {{ $ctx.Release.Namespace }}
  labels:
    {{- include "contextiq.componentLabels" $names | nindent 4 }}
spec:
  {{- if not $v.autoscaling.enabled }}
  replicas: {{ $v.replicaCount }}
  {{- end }}
  revisionHistoryLimit: {{ $root.revisionHistoryLimit }}
  selector:
    matchLabels:
      {{- include "contextiq.componentSelectorLabels" $names | nindent 6 }}
  {{- with $root.updateStrategy }}
  strategy:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  template:
    metadata:
      labels:
        {{- include "contextiq.componentLabels" $names | nindent 8 }}
        {{- with $root.podLabels }}
        {{- toYaml . | nindent 8 }}
        {{- end }}
        {{- with $v.podLabels }}
        {{- toYaml . | nindent 8 }}
        {{- end }}
      annotations:
        {{- include "contextiq.checksumAnnotations" $ctx | nindent 8 }}
        {{- with $root.podAnnotations }}
        {{- toYaml . | nindent 8 }}
        {{- end }}
        {{- with $v.podAnnotations }}
        {{- toYaml . | nindent 8 }}
        {{- end }}
    spec:
      serviceAccountName: {{ include "contextiq.serviceAccountName" $ctx }}
      automountServiceAccountToken: {{ $root.serviceAccount.automountToken }}
      {{- /* Service links would inject variables such as CONTEXTIQ_GATEWAY_PORT=tcp://… into
      the CONTEXTIQ_* namespace the settings read; nothing here needs them. */}}
      enableServiceLinks: false
      {{- with $root.imagePullSecrets }}
      imagePullSecrets:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      {{- with $v.priorityClassName }}
      priorityClassName: {{ . }}
      {{- end }}
      securityContext:
        {{- toYaml $root.podSecurityContext | nindent 8 }}
      terminationGracePeriodSeconds: {{ $v.terminationGracePeriodSeconds }}
      containers:
        - name: {{ .component }}
          image: {{ include "contextiq.image" $ctx | quote }}
          imagePullPolicy: {{ $root.image.pullPolicy }}
          command: ["python", "-m", {{ .module | quote }}]
          ports:
            - name: {{ $portName }}
              containerPort: {{ $port }}
              protocol: TCP
            {{- if not .http }}
            - name: metrics
              containerPort: {{ $root.containerPorts.metrics }}
              protocol: TCP
            {{- end }}
          envFrom:
            - configMapRef:
                name: {{ include "contextiq.fullname" $ctx }}
          {{- $secretEnv := include "contextiq.secretEnv" (dict "ctx" $ctx "needs" (default (list) .needs)) }}
          {{- if or $secretEnv $v.extraEnv }}
          env:
            {{- with $secretEnv }}
            {{- . | trim | nindent 12 }}
            {{- end }}
            {{- with $v.extraEnv }}
            {{- toYaml . | nindent 12 }}
            {{- end }}
          {{- end }}
          {{- $p := $root.probes }}
          {{- if .http }}
          startupProbe:
            httpGet:
              path: {{ $v.probes.livenessPath }}
              port: {{ $portName }}
            {{- toYaml $p.startup | nindent 12 }}
          readinessProbe:
            httpGet:
              path: {{ $v.probes.readinessPath }}
              port: {{ $portName }}
            {{- toYaml $p.readiness | nindent 12 }}
          livenessProbe:
            httpGet:
              path: {{ $v.probes.livenessPath }}
              port: {{ $portName }}
            {{- toYaml $p.liveness | nindent 12 }}
          {{- else }}
          startupProbe:
            grpc:
              port: {{ $port }}
              service: {{ .healthService | quote }}
            {{- toYaml $p.startup | nindent 12 }}
          readinessProbe:
            grpc:
              port: {{ $port }}
              service: {{ .healthService | quote }}
            {{- toYaml $p.readiness | nindent 12 }}
          livenessProbe:
            grpc:
              port: {{ $port }}
              service: ""
            {{- toYaml $p.liveness | nindent 12 }}
          {{- end }}
          resources:
            {{- toYaml $v.resources | nindent 12 }}
          securityContext:
            {{- toYaml $root.securityContext | nindent 12 }}
          volumeMounts:
            - name: tmp
              mountPath: /tmp
      volumes:
        {{- include "contextiq.tmpVolume" $ctx | nindent 8 }}
      {{- with $v.nodeSelector }}
      nodeSelector:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      {{- with $v.affinity }}
      affinity:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      {{- with $v.tolerations }}
      tolerations:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      {{- with $v.topologySpreadConstraints }}
      topologySpreadConstraints:
        {{- toYaml . | nindent 8 }}
      {{- end }}
{{- end }}

{{- define "contextiq.service" -}}
{{- $ctx := .ctx }}
{{- $v := index $ctx.Values .component }}
{{- $names := dict "ctx" $ctx "component" .component }}
{{- $portName := ternary "http" "grpc" (default false .http) }}
apiVersion: v1
kind: Service
metadata:
  name: {{ include "contextiq.componentName" $names }}
  namespace: {{ $ctx.Release.Namespace }}
  labels:
    {{- include "contextiq.componentLabels" $names | nindent 4 }}
  {{- with $v.service.annotations }}
  annotations:
    {{- toYaml . | nindent 4 }}
  {{- end }}
spec:
  type: {{ $v.service.type }}
  selector:
    {{- include "contextiq.componentSelectorLabels" $names | nindent 4 }}
  ports:
    - name: {{ $portName }}
      port: {{ $v.service.port }}
      targetPort: {{ $portName }}
      protocol: TCP
      appProtocol: {{ $portName }}
    {{- if not .http }}
    - name: metrics
      port: {{ $ctx.Values.containerPorts.metrics }}
      targetPort: metrics
      protocol: TCP
      appProtocol: http
    {{- end }}
{{- end }}

{{- define "contextiq.hpa" -}}
{{- $ctx := .ctx }}
{{- $v := index $ctx.Values .component }}
{{- $names := dict "ctx" $ctx "component" .component }}
{{- $a := $v.autoscaling }}
{{- if $a.enabled }}
{{- if not (or $a.targetCPUUtilizationPercentage $a.targetMemoryUtilizationPercentage) }}
{{- fail (printf "%s.autoscaling needs targetCPUUtilizationPercentage or targetMemoryUtilizationPercentage" .component) }}
{{- end }}
apiVersion: autoscaling/v2
kind: HorizontalPodAutoscaler
metadata:
  name: {{ include "contextiq.componentName" $names }}
  namespace: {{ $ctx.Release.Namespace }}
  labels:
    {{- include "contextiq.componentLabels" $names | nindent 4 }}
spec:
  scaleTargetRef:
    apiVersion: apps/v1
    kind: Deployment
    name: {{ include "contextiq.componentName" $names }}
  minReplicas: {{ $a.minReplicas }}
  maxReplicas: {{ $a.maxReplicas }}
  metrics:
    {{- with $a.targetCPUUtilizationPercentage }}
    - type: Resource
      resource:
        name: cpu
        target:
          type: Utilization
          averageUtilization: {{ . }}
    {{- end }}
    {{- with $a.targetMemoryUtilizationPercentage }}
    - type: Resource
      resource:
        name: memory
        target:
          type: Utilization
          averageUtilization: {{ . }}
    {{- end }}
  {{- with $a.behavior }}
  behavior:
    {{- toYaml . | nindent 4 }}
  {{- end }}
{{- end }}
{{- end }}

{{- define "contextiq.pdb" -}}
{{- $ctx := .ctx }}
{{- $v := index $ctx.Values .component }}
{{- $names := dict "ctx" $ctx "component" .component }}
{{- $b := $v.podDisruptionBudget }}
{{- if $b.enabled }}
apiVersion: policy/v1
kind: PodDisruptionBudget
metadata:
  name: {{ include "contextiq.componentName" $names }}
  namespace: {{ $ctx.Release.Namespace }}
  labels:
    {{- include "contextiq.componentLabels" $names | nindent 4 }}
spec:
  selector:
    matchLabels:
      {{- include "contextiq.componentSelectorLabels" $names | nindent 6 }}
  {{- /* minAvailable wins when set; maxUnavailable (default 1) otherwise. */}}
  {{- if not (kindIs "invalid" $b.minAvailable) }}
  minAvailable: {{ $b.minAvailable }}
  {{- else }}
  maxUnavailable: {{ if kindIs "invalid" $b.maxUnavailable }}1{{ else }}{{ $b.maxUnavailable }}{{ end }}
  {{- end }}
{{- end }}
{{- end }}
