{{/*
Labels of every object. The first two are the labels manifests/ gives its objects; the rest are
Helm's own (tests/test_helm_chart.py drops exactly these four when it compares the chart's objects
with manifests/'s). Selectors and pod template labels never carry Helm's: project namespaces'
NetworkPolicies admit the gateway's pods by `app.kubernetes.io/name: wakegate` alone.
*/}}
{{- define "wakegate.helmLabels" -}}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{- end }}

{{- define "wakegate.labels" -}}
app.kubernetes.io/name: wakegate
app.kubernetes.io/part-of: wakegate
{{ include "wakegate.helmLabels" . }}
{{- end }}

{{/*
Labels of the controller's objects (manifests/base/controller.yaml). Its pods are deliberately not
`app.kubernetes.io/name: wakegate`: project namespaces' NetworkPolicies admit only the gateway's pods.
*/}}
{{- define "wakegate.controllerLabels" -}}
app.kubernetes.io/name: wakegate-controller
app.kubernetes.io/part-of: wakegate
{{ include "wakegate.helmLabels" . }}
{{- end }}

{{/* The wakegate image: the gateway and the controller run the same one. */}}
{{- define "wakegate.image" -}}
{{- printf "%s:%s" .Values.image.repository (.Values.image.tag | default .Chart.AppVersion) -}}
{{- end }}

{{/* The admin token Secret the pods mount. */}}
{{- define "wakegate.adminTokenSecret" -}}
{{- .Values.adminToken.existingSecret | default "wakegate-admin-token" -}}
{{- end }}

{{/* --trusted-proxies: the list, comma-separated; never a network that contains every address. */}}
{{- define "wakegate.trustedProxies" -}}
{{- range .Values.trustedProxies }}
{{- if or (hasSuffix "/0" (toString .)) (eq (toString .) "") }}
{{- fail (printf "trustedProxies: %q would trust every peer (or none is named); list the Ingress controller's addresses (manifests/README.md)" (toString .)) }}
{{- end }}
{{- end }}
{{- join "," .Values.trustedProxies -}}
{{- end }}

{{/* The domain, checked once. */}}
{{- define "wakegate.domain" -}}
{{- $d := required "domain is required: projects are served at <project>.<domain>" .Values.domain -}}
{{- if or (hasPrefix "*." $d) (hasPrefix "." $d) (contains "/" $d) (contains ":" $d) -}}
{{- fail (printf "domain: %q must be a bare DNS name such as env.example.com (no *., scheme, port or path)" $d) -}}
{{- end -}}
{{- $d -}}
{{- end }}
