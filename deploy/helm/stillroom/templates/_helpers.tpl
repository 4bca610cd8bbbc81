{{/* Chart name, truncated to the 63 characters a label value allows. */}}
{{- define "stillroom.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Release-qualified name for every object; the release name alone when it already says it. */}}
{{- define "stillroom.fullname" -}}
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

{{- define "stillroom.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Labels of every object the chart makes. */}}
{{- define "stillroom.labels" -}}
helm.sh/chart: {{ include "stillroom.chart" . }}
app.kubernetes.io/name: {{ include "stillroom.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{/*
The server pods, as the Deployment, Service, PodDisruptionBudget and ServiceMonitor select them.
The component label keeps the migration Job's pod out of the Service.
*/}}
{{- define "stillroom.selectorLabels" -}}
app.kubernetes.io/name: {{ include "stillroom.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: server
{{- end }}

{{- define "stillroom.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "stillroom.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "stillroom.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}

{{/* The Secret the pods read: the operator's existingSecret, or the chart's own. */}}
{{- define "stillroom.secretName" -}}
{{- default (include "stillroom.fullname" .) .Values.secrets.existingSecret }}
{{- end }}

{{/* The chart's own Secret data (empty when existingSecret is set or nothing is secret). */}}
{{- define "stillroom.secretData" -}}
{{- if not .Values.secrets.existingSecret }}
{{- with .Values.secrets.adminToken }}
{{ $.Values.secrets.keys.adminToken }}: {{ . | b64enc | quote }}
{{- end }}
{{- with .Values.secrets.upstreamApiKey }}
{{ $.Values.secrets.keys.upstreamApiKey }}: {{ . | b64enc | quote }}
{{- end }}
{{- with .Values.secrets.trainApiKey }}
{{ $.Values.secrets.keys.trainApiKey }}: {{ . | b64enc | quote }}
{{- end }}
{{- if eq .Values.database.backend "postgres" }}
{{ .Values.secrets.keys.databaseUrl }}: {{ .Values.database.url | b64enc | quote }}
{{- end }}
{{- end }}
{{- end }}

{{/*
A settings value as an env string. Helm reads every number in a values file as a float, and a
float prints as 3.3554432e+07: whole numbers are printed as integers instead.
*/}}
{{- define "stillroom.envValue" -}}
{{- if and (kindIs "float64" .) (eq (floor .) .) }}
{{- int64 . | toString }}
{{- else }}
{{- toString . }}
{{- end }}
{{- end }}

{{/* Refuse values that would deploy something broken, with one clear message each. */}}
{{- define "stillroom.validate" -}}
{{- $backend := .Values.database.backend }}
{{- if not (has $backend (list "sqlite" "postgres")) }}
{{- fail (printf "database.backend must be sqlite or postgres, not %q" $backend) }}
{{- end }}
{{- if eq $backend "sqlite" }}
{{- if or .Values.autoscaling.enabled (gt (int .Values.replicaCount) 1) }}
{{- fail "replicaCount > 1 and autoscaling need database.backend=postgres: a SQLite file cannot be shared between pods" }}
{{- end }}
{{- if .Values.migrations.job.enabled }}
{{- fail "migrations.job.enabled needs database.backend=postgres (SQLite migrates on start)" }}
{{- end }}
{{- if .Values.database.url }}
{{- fail "database.url is set but database.backend is sqlite: set database.backend=postgres" }}
{{- end }}
{{- else if not .Values.secrets.existingSecret }}
{{- if not (regexMatch "^postgres(ql)?://" .Values.database.url) }}
{{- fail "database.backend=postgres needs database.url=postgresql://... (or secrets.existingSecret holding it)" }}
{{- end }}
{{- end }}
{{- if and .Values.secrets.existingSecret (or .Values.secrets.adminToken .Values.secrets.upstreamApiKey .Values.secrets.trainApiKey .Values.database.url) }}
{{- fail "secrets.existingSecret is set: put the admin token, upstream key, training provider key and database URL in it, not in secrets.adminToken, secrets.upstreamApiKey, secrets.trainApiKey or database.url" }}
{{- end }}
{{- if and .Values.migrations.job.enabled (not .Values.secrets.existingSecret) }}
{{- fail "migrations.job.enabled needs secrets.existingSecret: the hook Job runs before the chart's own Secret exists" }}
{{- end }}
{{- with .Values.secrets.adminToken }}
{{- if lt (len .) 32 }}
{{- fail "secrets.adminToken must be at least 32 characters (e.g. openssl rand -hex 32)" }}
{{- end }}
{{- end }}
{{- range $key := list "host" "port" "database" "admin_token" "upstream_api_key" }}
{{- if hasKey $.Values.settings $key }}
{{- fail (printf "settings.%s is set by the chart; see values.yaml" $key) }}
{{- end }}
{{- end }}
{{- end }}

{{/* STILLROOM_DATABASE: the SQLite file on /data, or the Postgres URL from the Secret. */}}
{{- define "stillroom.databaseEnv" -}}
- name: STILLROOM_DATABASE
{{- if eq .Values.database.backend "postgres" }}
  valueFrom:
    secretKeyRef:
      name: {{ include "stillroom.secretName" . }}
      key: {{ .Values.secrets.keys.databaseUrl }}
{{- else }}
  value: /data/stillroom.db
{{- end }}
{{- end }}

{{/* The server's environment beyond the ConfigMap: the database and the secrets. */}}
{{- define "stillroom.env" -}}
{{ include "stillroom.databaseEnv" . }}
{{- if or .Values.secrets.existingSecret .Values.secrets.adminToken }}
- name: STILLROOM_ADMIN_TOKEN
  valueFrom:
    secretKeyRef:
      name: {{ include "stillroom.secretName" . }}
      key: {{ .Values.secrets.keys.adminToken }}
      optional: {{ not .Values.secrets.adminToken }}
{{- end }}
{{- if or .Values.secrets.existingSecret .Values.secrets.upstreamApiKey }}
- name: STILLROOM_UPSTREAM_API_KEY
  valueFrom:
    secretKeyRef:
      name: {{ include "stillroom.secretName" . }}
      key: {{ .Values.secrets.keys.upstreamApiKey }}
      optional: {{ not .Values.secrets.upstreamApiKey }}
{{- end }}
{{- if or .Values.secrets.existingSecret .Values.secrets.trainApiKey }}
- name: STILLROOM_TRAIN_API_KEY
  valueFrom:
    secretKeyRef:
      name: {{ include "stillroom.secretName" . }}
      key: {{ .Values.secrets.keys.trainApiKey }}
      optional: {{ not .Values.secrets.trainApiKey }}
{{- end }}
{{- with .Values.extraEnv }}
{{ toYaml . }}
{{- end }}
{{- end }}
