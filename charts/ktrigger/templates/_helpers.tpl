{{/* The chart's name. */}}
{{- define "ktrigger.chartName" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Base name of the release's objects: the release name when it holds the chart's name, else
release-chart; fullnameOverride wins. Two releases never share an object name. */}}
{{- define "ktrigger.name" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else if contains (include "ktrigger.chartName" .) .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name (include "ktrigger.chartName" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{/* The controller's Deployment, Service, ClusterRole and Lease name. */}}
{{- define "ktrigger.controllerName" -}}
{{- printf "%s-controller" (include "ktrigger.name" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "ktrigger.serviceAccountName" -}}
{{- default (include "ktrigger.name" .) .Values.serviceAccount.name -}}
{{- end -}}

{{- define "ktrigger.image" -}}
{{- if .Values.image.digest -}}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest -}}
{{- else -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}
{{- end -}}

{{- define "ktrigger.labels" -}}
app.kubernetes.io/name: {{ include "ktrigger.chartName" . }}
app.kubernetes.io/part-of: ktrigger
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{- end -}}

{{- define "ktrigger.selectorLabels" -}}
app.kubernetes.io/name: {{ include "ktrigger.chartName" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: controller
{{- end -}}
