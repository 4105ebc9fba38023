{{/* Name of the chart's objects. */}}
{{- define "ktrigger.name" -}}
{{- default "ktrigger" .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* The controller's Deployment, Service, ClusterRole and Lease name. */}}
{{- define "ktrigger.controllerName" -}}
{{- printf "%s-controller" (include "ktrigger.name" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "ktrigger.serviceAccountName" -}}
{{- default (include "ktrigger.name" .) .Values.serviceAccount.name -}}
{{- end -}}

{{- define "ktrigger.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}

{{- define "ktrigger.labels" -}}
app.kubernetes.io/name: {{ include "ktrigger.name" . }}
app.kubernetes.io/part-of: ktrigger
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{- end -}}

{{- define "ktrigger.selectorLabels" -}}
app.kubernetes.io/name: {{ include "ktrigger.name" . }}
app.kubernetes.io/component: controller
{{- end -}}
