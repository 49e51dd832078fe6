{{/* Chart name. */}}
{{- define "wxauth.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Full name of the release's resources. */}}
{{- define "wxauth.fullname" -}}
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

{{- define "wxauth.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Labels of every resource. */}}
{{- define "wxauth.labels" -}}
helm.sh/chart: {{ include "wxauth.chart" . }}
{{ include "wxauth.selectorLabels" . }}
app.kubernetes.io/version: {{ .Values.image.tag | default .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: wxauth
{{- end }}

{{/* Labels that select the pods (immutable once deployed). */}}
{{- define "wxauth.selectorLabels" -}}
app.kubernetes.io/name: {{ include "wxauth.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "wxauth.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "wxauth.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* The Secret holding sealing keys and appsecrets. */}}
{{- define "wxauth.secretName" -}}
{{- default (include "wxauth.fullname" .) .Values.secrets.existingSecret }}
{{- end }}

{{/* Where the Secret's files are mounted. */}}
{{- define "wxauth.secretDir" -}}/etc/wxauth/secrets{{- end }}

{{/* Where the Redis TLS files (redisTls) are mounted. */}}
{{- define "wxauth.redisTlsDir" -}}/etc/wxauth/redis-tls{{- end }}

{{/* "true" when redisTls names a Secret (a CA, a client certificate or both). */}}
{{- define "wxauth.redisTls" -}}
{{- if or .Values.redisTls.caSecretRef.name .Values.redisTls.clientSecretRef.name }}true{{ end }}
{{- end }}

{{/* Checks across values that the schema cannot express; fails the render with the key. */}}
{{- define "wxauth.validate" -}}
{{- $c := .Values.config }}
{{- $u := urlParse $c.server.callback_url }}
{{- if ne $u.scheme "https" }}
{{- fail "config.server.callback_url: must be https (WeChat calls it from the internet)" }}
{{- end }}
{{- if ne $u.path "/wechat/callback" }}
{{- fail "config.server.callback_url: the path must be /wechat/callback (the relay's only route)" }}
{{- end }}
{{- if or $u.query $u.fragment }}
{{- fail "config.server.callback_url: must not have a query or fragment" }}
{{- end }}
{{- $s := .Values.shutdown }}
{{- if le (int $s.terminationGracePeriodSeconds) (add (int $s.preStopSeconds) (int $s.drainSeconds) | int) }}
{{- fail "shutdown.terminationGracePeriodSeconds: must exceed preStopSeconds + drainSeconds" }}
{{- end }}
{{- if eq $c.store.kind "memory" }}
{{- if or .Values.autoscaling.enabled (gt (int .Values.replicaCount) 1) }}
{{- fail "config.store.kind: memory keeps flows and tokens in one process; use replicaCount 1 and no autoscaling, or redis" }}
{{- end }}
{{- else }}
{{- if not (or $c.store.url $c.store.urls .Values.redisAuth.urlSecretRef.name) }}
{{- fail "config.store.url: required with store.kind redis (or config.store.urls, or redisAuth.urlSecretRef)" }}
{{- end }}
{{- if and $c.store.url $c.store.urls }}
{{- fail "config.store: set url (single node) or urls (cluster), not both" }}
{{- end }}
{{- if and .Values.redisAuth.passwordSecretRef.name (not $c.store.url) }}
{{- fail "redisAuth.passwordSecretRef: needs config.store.url to splice the password into" }}
{{- end }}
{{- if and .Values.redisAuth.passwordSecretRef.name .Values.redisAuth.urlSecretRef.name }}
{{- fail "redisAuth: set urlSecretRef or passwordSecretRef, not both" }}
{{- end }}
{{- if regexMatch "^[a-z+]+://[^/]*@" (default "" $c.store.url) }}
{{- fail "config.store.url: has credentials; put them in a Secret (redisAuth) instead of the ConfigMap" }}
{{- end }}
{{- if include "wxauth.redisTls" . }}
{{- /* A URL from redisAuth.urlSecretRef is not seen here; wxauth checks it at start-up. */}}
{{- range (compact (append (default (list) $c.store.urls) (default "" $c.store.url))) }}
{{- if not (hasPrefix "rediss://" .) }}
{{- fail (printf "redisTls: set, but the store URL %s is not rediss:// (the connection would not use TLS)" .) }}
{{- end }}
{{- end }}
{{- end }}
{{- end }}
{{- if and (eq $c.store.kind "memory") (include "wxauth.redisTls" .) }}
{{- fail "redisTls: set, but config.store.kind is memory" }}
{{- end }}
{{- if not .Values.secrets.existingSecret }}
{{- range $name, $app := $c.apps }}
{{- if not (index $.Values.secrets.apps $name) }}
{{- fail (printf "secrets.apps.%s: the appsecret of app %s is required (or use secrets.existingSecret)" $name $name) }}
{{- end }}
{{- end }}
{{- if and $c.apps (not $.Values.secrets.sealingKeys) }}
{{- fail "secrets.sealingKeys: required (`wxauth gen-key` makes one), or use secrets.existingSecret" }}
{{- end }}
{{- end }}
{{- range $name, $client := $c.clients }}
{{- range $client.apps }}
{{- if not (hasKey $c.apps .) }}
{{- fail (printf "config.clients.%s.apps: no app named %s" $name .) }}
{{- end }}
{{- end }}
{{- end }}
{{- with $c.oidc }}
{{- if not .signing_key_id }}
{{- fail "config.oidc.signing_key_id: required with config.oidc (the kid of secrets.oidcSigningKey)" }}
{{- end }}
{{- if not $.Values.secrets.existingSecret }}
{{- if not $.Values.secrets.oidcSigningKey }}
{{- fail "secrets.oidcSigningKey: required with config.oidc (a PEM RSA key of >= 2048 bits), or use secrets.existingSecret" }}
{{- end }}
{{- if and .previous_signing_key_id (not $.Values.secrets.oidcPreviousSigningKey) }}
{{- fail "secrets.oidcPreviousSigningKey: required with config.oidc.previous_signing_key_id" }}
{{- end }}
{{- if and .es256_signing_key_id (not $.Values.secrets.oidcEs256SigningKey) }}
{{- fail "secrets.oidcEs256SigningKey: required with config.oidc.es256_signing_key_id (a PEM EC P-256 key, PKCS#8)" }}
{{- end }}
{{- if and .previous_es256_signing_key_id (not $.Values.secrets.oidcPreviousEs256SigningKey) }}
{{- fail "secrets.oidcPreviousEs256SigningKey: required with config.oidc.previous_es256_signing_key_id" }}
{{- end }}
{{- end }}
{{- if and .previous_es256_signing_key_id (not .es256_signing_key_id) }}
{{- fail "config.oidc.es256_signing_key_id: required with config.oidc.previous_es256_signing_key_id (the key after it)" }}
{{- end }}
{{- range $id, $rp := .clients }}
{{- range $rp.apps }}
{{- if not (hasKey $c.apps .) }}
{{- fail (printf "config.oidc.clients.%s.apps: no app named %s" $id .) }}
{{- end }}
{{- end }}
{{- if and (eq (toString $rp.id_token_signed_response_alg) "ES256") (not $.Values.config.oidc.es256_signing_key_id) }}
{{- fail (printf "config.oidc.clients.%s.id_token_signed_response_alg: ES256 needs config.oidc.es256_signing_key_id (and secrets.oidcEs256SigningKey)" $id) }}
{{- end }}
{{- end }}
{{- end }}
{{- end }}
