{{/* Labels on every object: the same as deploy/manifests. */}}
{{- define "gilscope.labels" -}}
app.kubernetes.io/name: gilscope
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
{{- end }}

{{- define "gilscope.selectorLabels" -}}
app.kubernetes.io/name: gilscope
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/* The capabilities the agent needs; deploy/README.md says why each. */}}
{{- define "gilscope.capabilities" -}}
{{- $caps := list "BPF" "PERFMON" "SYS_PTRACE" "DAC_READ_SEARCH" -}}
{{- if .Values.uprobes.enabled }}{{ $caps = append $caps "SYS_ADMIN" }}{{ end -}}
{{- toJson $caps -}}
{{- end }}
