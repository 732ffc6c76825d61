{{- define "gw.name" -}}{{ .Chart.Name }}{{- end -}}

{{- define "gw.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}{{ .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else -}}{{ printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" }}{{- end -}}
{{- end -}}

{{- define "gw.labels" -}}
app.kubernetes.io/name: {{ include "gw.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{- define "gw.selector" -}}
app.kubernetes.io/name: {{ include "gw.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: gateway
{{- end -}}

{{- define "gw.secretName" -}}
{{- .Values.existingSecret | default (printf "%s-env" (include "gw.fullname" .)) -}}
{{- end -}}

{{- define "gw.redisUrl" -}}
{{- if .Values.redis.enabled -}}redis://{{ include "gw.fullname" . }}-redis:6379/0
{{- else -}}{{ required "redis.externalUrl is required when redis.enabled is false" .Values.redis.externalUrl }}{{- end -}}
{{- end -}}

{{/* The policy as a map, for rendering the vLLM servers from it. */}}
{{- define "gw.policy" -}}
{{- $policy := fromYaml .Values.policy -}}
{{- if hasKey $policy "Error" -}}{{- fail (printf "values.policy is not valid YAML: %s" $policy.Error) -}}{{- end -}}
{{- toJson $policy -}}
{{- end -}}

{{/* ${VAR:-default} -> default; ${VAR} -> empty (the chart cannot see the gateway's environment). */}}
{{- define "gw.defaulted" -}}
{{- regexReplaceAll "\\$\\{[A-Za-z_][A-Za-z0-9_]*(:-([^}]*))?\\}" . "${2}" -}}
{{- end -}}
