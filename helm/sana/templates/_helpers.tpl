{{/* Names, labels and the pod spec shared by every SANA service. */}}

{{- define "sana.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "sana.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/* Object name of one component: (dict "root" $ "role" "denoiser") */}}
{{- define "sana.componentName" -}}
{{- printf "%s-%s" (include "sana.fullname" .root) .role | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "sana.selectorLabels" -}}
app.kubernetes.io/name: {{ include "sana.name" .root }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .role }}
{{- end -}}

{{- define "sana.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .root.Chart.Name .root.Chart.Version | replace "+" "_" }}
{{ include "sana.selectorLabels" . }}
app.kubernetes.io/version: {{ .root.Chart.AppVersion | quote }}
app.kubernetes.io/part-of: sana
app.kubernetes.io/managed-by: {{ .root.Release.Service }}
{{- end -}}

{{- define "sana.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "sana.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{/*
The served components for the mode, as {"items": [{key, role}]}: key is the values block, role the `sana serve`
role. Read with (include "sana.components" . | fromYaml).items
*/}}
{{- define "sana.components" -}}
{{- if eq .Values.mode "all" }}
items:
  - {key: all, role: all}
{{- else }}
items:
  - {key: gateway, role: gateway}
  - {key: textEncoder, role: text-encoder}
  - {key: denoiser, role: denoiser}
  - {key: decoder, role: decoder}
{{- end }}
{{- end -}}

{{/* The components that expose the public Generation API. */}}
{{- define "sana.isEntry" -}}
{{- if or (eq . "gateway") (eq . "all") }}true{{ end -}}
{{- end -}}

{{/* In-cluster gRPC target of a stage for the gateway's dns:/// round robin over the headless Service's pods. */}}
{{- define "sana.stageTarget" -}}
{{- printf "dns:///%s.%s.svc:%v" (include "sana.componentName" (dict "root" .root "role" .role)) .root.Release.Namespace (index .root.Values .key).port -}}
{{- end -}}

{{- define "sana.image" -}}
{{- $image := ternary .root.Values.cudaImage .root.Values.image .gpu -}}
{{- printf "%s:%s" $image.repository (default .root.Chart.AppVersion $image.tag) -}}
{{- end -}}

{{/* TLS environment (needs the matching server flags) and the certificate volume mount. */}}
{{- define "sana.tlsEnv" -}}
{{- if .Values.tls.enabled }}
- name: SANA_TLS_CERT
  value: /etc/sana/tls/tls.crt
- name: SANA_TLS_KEY
  value: /etc/sana/tls/tls.key
- name: SANA_TLS_CA
  value: /etc/sana/tls/ca.crt
{{- if .Values.tls.mutual }}
- name: SANA_TLS_CLIENT_AUTH
  value: require
{{- end }}
{{- end }}
{{- end -}}

{{/* A gRPC health probe on the service port (grpc.health.v1); kubelet cannot do TLS, so TCP then. */}}
{{- define "sana.probe" -}}
{{- if .root.Values.tls.enabled }}
tcpSocket:
  port: grpc
{{- else }}
grpc:
  port: {{ .port }}
{{- end }}
{{- end -}}

{{/*
The pod template of one component: (dict "root" $ "key" "denoiser" "role" "denoiser" "args" (list ...) "env" (list ...))
*/}}
{{- define "sana.podTemplate" -}}
{{- $root := .root -}}
{{- $v := index $root.Values .key -}}
{{- $gpu := and (hasKey $v "gpu") $v.gpu.enabled -}}
{{- $serves := hasKey $v "port" -}}
{{- $needsModel := not (has .role (list "gateway" "worker")) -}}
{{- $resources := deepCopy ($v.resources | default dict) -}}
{{- if $gpu }}
{{- $_ := set $resources "limits" (merge (dict "nvidia.com/gpu" $v.gpu.count) ($resources.limits | default dict)) -}}
{{- end }}
metadata:
  labels:
    {{- include "sana.selectorLabels" (dict "root" $root "role" .role) | nindent 4 }}
  {{- with $v.podAnnotations }}
  annotations:
    {{- toYaml . | nindent 4 }}
  {{- end }}
spec:
  serviceAccountName: {{ include "sana.serviceAccountName" $root }}
  automountServiceAccountToken: false
  terminationGracePeriodSeconds: {{ add $root.Values.shutdownGraceSeconds 15 }}
  securityContext:
    {{- toYaml $root.Values.podSecurityContext | nindent 4 }}
  {{- with $root.Values.imagePullSecrets }}
  imagePullSecrets:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- if and $needsModel $root.Values.model.initContainer.enabled }}
  initContainers:
    - name: fetch-model
      image: {{ required "model.initContainer.image is required when model.initContainer.enabled" $root.Values.model.initContainer.image }}
      command:
        {{- toYaml (required "model.initContainer.command is required when model.initContainer.enabled" $root.Values.model.initContainer.command) | nindent 8 }}
      env:
        - name: SANA_MODEL
          value: {{ $root.Values.model.mountPath | quote }}
        {{- with $root.Values.model.initContainer.env }}
        {{- toYaml . | nindent 8 }}
        {{- end }}
      {{- with $root.Values.model.initContainer.resources }}
      resources:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      securityContext:
        {{- toYaml $root.Values.securityContext | nindent 8 }}
      volumeMounts:
        - name: model
          mountPath: {{ $root.Values.model.mountPath }}
  {{- end }}
  containers:
    - name: sana
      image: {{ include "sana.image" (dict "root" $root "gpu" $gpu) }}
      imagePullPolicy: {{ $root.Values.image.pullPolicy }}
      args:
        {{- toYaml .args | nindent 8 }}
      env:
        - name: SANA_HOST
          value: 0.0.0.0
        {{- if $serves }}
        - name: SANA_PORT
          value: {{ $v.port | quote }}
        - name: SANA_MAX_IN_FLIGHT
          value: {{ $v.maxInFlight | quote }}
        - name: SANA_MAX_QUEUE
          value: {{ $v.maxQueue | quote }}
        {{- end }}
        - name: SANA_METRICS_HOST
          value: 0.0.0.0
        - name: SANA_METRICS_PORT
          value: {{ $v.metricsPort | quote }}
        - name: SANA_LOG_LEVEL
          value: {{ $root.Values.logLevel | quote }}
        - name: SANA_SHUTDOWN_GRACE_SECONDS
          value: {{ $root.Values.shutdownGraceSeconds | quote }}
        - name: SANA_CACHE_DIR
          value: {{ $root.Values.compileCache.mountPath | quote }}
        - name: SANA_PRECISION
          value: {{ $root.Values.precision | quote }}
        {{- if $needsModel }}
        - name: SANA_MODEL
          value: {{ $root.Values.model.mountPath | quote }}
        - name: SANA_DEVICE
          value: {{ ternary "cuda" "cpu" $gpu }}
        {{- end }}
        {{- with $v.threads }}
        - name: SANA_THREADS
          value: {{ . | quote }}
        {{- end }}
        {{- with .env }}
        {{- toYaml . | nindent 8 }}
        {{- end }}
        {{- with include "sana.tlsEnv" $root | trim }}
        {{- . | nindent 8 }}
        {{- end }}
        {{- with $v.extraEnv }}
        {{- toYaml . | nindent 8 }}
        {{- end }}
      ports:
        {{- if $serves }}
        - name: grpc
          containerPort: {{ $v.port }}
          protocol: TCP
        {{- end }}
        - name: metrics
          containerPort: {{ $v.metricsPort }}
          protocol: TCP
      {{- if $serves }}
      # NOT_SERVING until the model is loaded and warmed up (the startup probe allows for that) and while draining
      startupProbe:
        {{- include "sana.probe" (dict "root" $root "port" $v.port) | trim | nindent 8 }}
        periodSeconds: 10
        failureThreshold: {{ div $v.probes.startupSeconds 10 | max 1 }}
      readinessProbe:
        {{- include "sana.probe" (dict "root" $root "port" $v.port) | trim | nindent 8 }}
        periodSeconds: 5
        failureThreshold: 2
      livenessProbe:
        {{- include "sana.probe" (dict "root" $root "port" $v.port) | trim | nindent 8 }}
        periodSeconds: 20
        timeoutSeconds: 5
        failureThreshold: 3
      {{- end }}
      {{- with $resources }}
      resources:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      securityContext:
        {{- toYaml $root.Values.securityContext | nindent 8 }}
      volumeMounts:
        {{- if $needsModel }}
        - name: model
          mountPath: {{ $root.Values.model.mountPath }}
          readOnly: true
          {{- if and $root.Values.model.subPath (not $root.Values.model.initContainer.enabled) }}
          subPath: {{ $root.Values.model.subPath }}
          {{- end }}
        {{- end }}
        - name: compile-cache
          mountPath: {{ $root.Values.compileCache.mountPath }}
        - name: tmp
          mountPath: /tmp
        {{- if $root.Values.tls.enabled }}
        - name: tls
          mountPath: /etc/sana/tls
          readOnly: true
        {{- end }}
  volumes:
    {{- if $needsModel }}
    - name: model
      {{- if $root.Values.model.initContainer.enabled }}
      emptyDir:
        sizeLimit: {{ $root.Values.model.initContainer.sizeLimit }}
      {{- else }}
      persistentVolumeClaim:
        claimName: {{ required "model.persistentVolumeClaim.claimName (or model.initContainer) is required" $root.Values.model.persistentVolumeClaim.claimName }}
        readOnly: true
      {{- end }}
    {{- end }}
    - name: compile-cache
      {{- if $root.Values.compileCache.persistentVolumeClaim.claimName }}
      persistentVolumeClaim:
        claimName: {{ $root.Values.compileCache.persistentVolumeClaim.claimName }}
      {{- else }}
      emptyDir:
        sizeLimit: {{ $root.Values.compileCache.sizeLimit }}
      {{- end }}
    - name: tmp
      emptyDir:
        sizeLimit: 1Gi
    {{- if $root.Values.tls.enabled }}
    - name: tls
      secret:
        secretName: {{ required "tls.secretName is required when tls.enabled" $root.Values.tls.secretName }}
    {{- end }}
  {{- with $v.nodeSelector }}
  nodeSelector:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with $v.tolerations }}
  tolerations:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with $v.affinity }}
  affinity:
    {{- toYaml . | nindent 4 }}
  {{- end }}
{{- end -}}
