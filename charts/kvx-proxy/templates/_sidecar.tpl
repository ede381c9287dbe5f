{{/*
The sidecar form, for pods you own (a notebook, a training Job, an MLflow client Deployment).

It is a native sidecar: an initContainers entry with restartPolicy: Always, so Kubernetes starts it before the
main containers, holds them back until its startup probe sees /readyz (first token held), keeps it running beside
them, and stops it after them. Requires Kubernetes 1.29 or newer.

Inside this chart:
    initContainers:
      {{- include "kvx-proxy.sidecarContainer" . | nindent 6 }}
    volumes:
      {{- include "kvx-proxy.sidecarVolumes" . | nindent 6 }}

From a parent chart that depends on kvx-proxy (with kvx-proxy.deployment.enabled: false, so only the ConfigMap
and ServiceAccount are rendered), build the context the helpers expect:
    {{- $kvx := dict "Values" (index .Values "kvx-proxy") "Release" .Release "Chart" (dict "Name" "kvx-proxy" "Version" "0.1.0" "AppVersion" "0.1.0") }}
    initContainers:
      {{- include "kvx-proxy.sidecarContainer" $kvx | nindent 6 }}
    volumes:
      {{- include "kvx-proxy.sidecarVolumes" $kvx | nindent 6 }}
The main containers then use MLFLOW_TRACKING_URI=http://127.0.0.1:<ports.proxy>. Run the pod as the Kubernetes
service account that carries the Workload Identity annotation.
*/}}

{{- define "kvx-proxy.sidecarContainer" -}}
{{- $env := list (dict "name" "KVX_LISTEN_HOST" "value" .Values.sidecar.listenHost) -}}
- name: kvx-proxy
  restartPolicy: Always
  {{- include "kvx-proxy.containerCommon" (dict "ctx" . "env" $env) | nindent 2 }}
  ports:
    - name: kvx-admin
      containerPort: {{ .Values.ports.admin }}
      protocol: TCP
  startupProbe:
    {{- include "kvx-proxy.httpProbe" (dict "path" "/readyz" "port" .Values.ports.admin "probe" .Values.probes.startup) | nindent 4 }}
  livenessProbe:
    {{- include "kvx-proxy.httpProbe" (dict "path" "/healthz" "port" .Values.ports.admin "probe" .Values.probes.liveness) | nindent 4 }}
{{- end }}

{{- define "kvx-proxy.sidecarVolumes" -}}
{{ include "kvx-proxy.volumes" . }}
{{- end }}
