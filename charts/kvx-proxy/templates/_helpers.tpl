{{/*
Naming and labels. Everything here reads only .Values, .Release and .Chart (Name, Version, AppVersion), so a parent
chart can call the sidecar helpers with a hand-built context (see _sidecar.tpl).
*/}}

{{- define "kvx-proxy.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "kvx-proxy.fullname" -}}
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

{{- define "kvx-proxy.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "kvx-proxy.selectorLabels" -}}
app.kubernetes.io/name: {{ include "kvx-proxy.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "kvx-proxy.labels" -}}
helm.sh/chart: {{ include "kvx-proxy.chart" . }}
{{ include "kvx-proxy.selectorLabels" . }}
app.kubernetes.io/version: {{ .Values.image.tag | default .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{- define "kvx-proxy.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "kvx-proxy.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "kvx-proxy.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository (.Values.image.tag | default .Chart.AppVersion) }}
{{- end }}
{{- end }}

{{/*
The kvx config file. listen/admin are set here, not by users: in a pod the proxy must listen on the pod's address
(listen.allowNonLoopback) for the Service, and the admin listener on it for kubelet probes and scraping. kvx answers
only a Host that names it (DNS-rebinding guard); IP addresses and localhost always pass, so the Service's names are
added to the user's server.allowedHosts.
*/}}
{{- define "kvx-proxy.config" -}}
{{- $_ := required "config.upstream.url is required: the MLflow tracking server, e.g. https://mlflow.example.com" .Values.config.upstream.url }}
{{- $owned := dict
      "listen" (dict "host" "0.0.0.0" "port" (int .Values.ports.proxy) "allowNonLoopback" true)
      "admin" (dict "enabled" true "host" "0.0.0.0" "port" (int .Values.ports.admin)) }}
{{- if .Values.deployment.enabled }}
{{- $svc := include "kvx-proxy.fullname" . }}
{{- $ns := .Release.Namespace }}
{{- $names := list $svc (printf "%s.%s" $svc $ns) (printf "%s.%s.svc" $svc $ns) (printf "%s.%s.svc.%s" $svc $ns .Values.clusterDomain) }}
{{- $hosts := concat (dig "server" "allowedHosts" (list) .Values.config) $names | uniq }}
{{- $_ := set $owned "server" (dict "allowedHosts" $hosts) }}
{{- end }}
{{- toYaml (mustMergeOverwrite (deepCopy .Values.config) $owned) }}
{{- end }}

{{/*
Fields shared by the Deployment's container and the sidecar: one definition, so both forms run the same proxy.
Called with (dict "ctx" <root context> "env" <extra EnvVar list>).
*/}}
{{- define "kvx-proxy.containerCommon" -}}
{{- $ctx := .ctx -}}
image: {{ include "kvx-proxy.image" $ctx | quote }}
imagePullPolicy: {{ $ctx.Values.image.pullPolicy }}
args:
  - serve
  - --config
  - /etc/kvx/kvx.yaml
{{- if or .env $ctx.Values.env }}
env:
  {{- with .env }}
  {{- toYaml . | nindent 2 }}
  {{- end }}
  {{- with $ctx.Values.env }}
  {{- toYaml . | nindent 2 }}
  {{- end }}
{{- end }}
{{- with $ctx.Values.envFrom }}
envFrom:
  {{- toYaml . | nindent 2 }}
{{- end }}
securityContext:
  {{- toYaml $ctx.Values.securityContext | nindent 2 }}
resources:
  {{- toYaml $ctx.Values.resources | nindent 2 }}
volumeMounts:
  - name: kvx-proxy-config
    mountPath: /etc/kvx
    readOnly: true
  - name: kvx-proxy-tmp
    mountPath: /tmp
  {{- with $ctx.Values.extraVolumeMounts }}
  {{- toYaml . | nindent 2 }}
  {{- end }}
{{- end }}

{{/* Pod volumes both forms need; the ConfigMap is the one this chart renders. */}}
{{- define "kvx-proxy.volumes" -}}
- name: kvx-proxy-config
  configMap:
    name: {{ include "kvx-proxy.fullname" . }}
- name: kvx-proxy-tmp
  emptyDir:
    sizeLimit: 16Mi
{{- with .Values.extraVolumes }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{- define "kvx-proxy.httpProbe" -}}
{{- $probe := .probe -}}
httpGet:
  path: {{ .path }}
  port: {{ .port }}
periodSeconds: {{ $probe.periodSeconds }}
timeoutSeconds: {{ $probe.timeoutSeconds }}
failureThreshold: {{ $probe.failureThreshold }}
{{- end }}
