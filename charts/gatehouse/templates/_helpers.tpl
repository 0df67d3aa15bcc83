{{/* Prefix of every resource name: the release name unless overridden. */}}
{{- define "gatehouse.fullname" -}}
{{- .Values.fullnameOverride | default .Release.Name | trunc 40 | trimSuffix "-" -}}
{{- end -}}

{{- define "gatehouse.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: gatehouse
{{- end -}}

{{/* Selector labels of one component: (dict "context" $ "component" "http"). */}}
{{- define "gatehouse.selectorLabels" -}}
app.kubernetes.io/name: {{ .context.Chart.Name }}
app.kubernetes.io/instance: {{ .context.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{- define "gatehouse.componentLabels" -}}
{{ include "gatehouse.labels" .context }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{/* Marks the ClusterIP Service of the HTTP pods' ops port, which the ServiceMonitor selects
(the public Service of the same pods carries the API port only). */}}
{{- define "gatehouse.metricsServiceLabel" -}}
gatehouse/service: metrics
{{- end -}}

{{- define "gatehouse.image" -}}
{{- $tag := .image.tag | default .context.Chart.AppVersion -}}
{{- printf "%s:%s" .image.repository $tag -}}
{{- end -}}

{{/* The release label published in discovery: the image tag without a digest. */}}
{{- define "gatehouse.release" -}}
{{- .Values.auth.image.tag | default .Chart.AppVersion | splitList "@" | first -}}
{{- end -}}

{{/* Pod-level security context of the Gatehouse images (numeric non-root user 10001). */}}
{{- define "gatehouse.podSecurityContext" -}}
runAsNonRoot: true
runAsUser: {{ .uid }}
runAsGroup: {{ .uid }}
fsGroup: {{ .uid }}
seccompProfile:
  type: RuntimeDefault
{{- end -}}

{{- define "gatehouse.containerSecurityContext" -}}
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
runAsNonRoot: true
capabilities:
  drop: ["ALL"]
{{- end -}}

{{/* Pods of one component spread over zones and nodes. */}}
{{- define "gatehouse.topologySpread" -}}
{{- range $key := list "topology.kubernetes.io/zone" "kubernetes.io/hostname" }}
- maxSkew: 1
  topologyKey: {{ $key }}
  whenUnsatisfiable: ScheduleAnyway
  labelSelector:
    matchLabels:
      {{- include "gatehouse.selectorLabels" $.selector | nindent 6 }}
  {{- if $.rolling }}
  matchLabelKeys: ["pod-template-hash"]
  {{- end }}
{{- end }}
{{- end -}}

{{- define "gatehouse.imagePullSecrets" -}}
{{- with .Values.imagePullSecrets }}
imagePullSecrets:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end -}}

{{/* Whether a component can run more than one pod (PDB): with autoscaling, whenever the HPA
may scale it past one (maxReplicas), minReplicas 1 included: a budget of maxUnavailable 1 never
blocks the eviction of a single pod, and without one a drain evicts every pod it finds at once. */}}
{{- define "gatehouse.multiReplica" -}}
{{- if .autoscaling.enabled -}}
{{- if gt (int .autoscaling.maxReplicas) 1 }}true{{ end -}}
{{- else if gt (int .replicaCount) 1 }}true{{ end -}}
{{- end -}}

{{/* etcd client endpoints, comma-separated host:port. */}}
{{- define "gatehouse.etcdEndpoints" -}}
{{- if .Values.etcd.enabled -}}
{{- $fullname := include "gatehouse.fullname" . -}}
{{- $endpoints := list -}}
{{- range $i := until (int .Values.etcd.replicaCount) -}}
{{- $endpoints = append $endpoints (printf "%s-etcd-%d.%s-etcd.%s.svc:%d" $fullname $i $fullname $.Release.Namespace (int $.Values.etcd.clientPort)) -}}
{{- end -}}
{{- join "," $endpoints -}}
{{- else -}}
{{- required "external.etcd.endpoints is required when etcd.enabled is false: list the host:port client endpoints of your etcd" (join "," .Values.external.etcd.endpoints | default "") -}}
{{- end -}}
{{- end -}}

{{- define "gatehouse.authKeysSecretName" -}}
{{- .Values.auth.existingSecret | default (printf "%s-auth-keys" (include "gatehouse.fullname" .)) -}}
{{- end -}}

{{- define "gatehouse.httpKeysSecretName" -}}
{{- .Values.http.existingSecret | default (printf "%s-http-keys" (include "gatehouse.fullname" .)) -}}
{{- end -}}

{{- define "gatehouse.mysqlSecretName" -}}
{{- .Values.mysql.auth.existingSecret | default (printf "%s-mysql" (include "gatehouse.fullname" .)) -}}
{{- end -}}

{{/* A secretKeyRef: (dict "name" n "key" k), for the data stores' images. */}}
{{- define "gatehouse.secretEnv" -}}
valueFrom:
  secretKeyRef:
    name: {{ .name }}
    key: {{ .key }}
{{- end -}}

{{/*
The Gatehouse containers read their secrets from files (`<VARIABLE>_FILE`,
services/foundation/config.py), so that no secret is in the pod spec or in the process's
environment, which child processes inherit. A container's secrets are a list of
(dict "env" VARIABLE "name" secretName "key" key), mounted from a projected volume of its own at
/var/run/secrets/gatehouse/VARIABLE.
*/}}
{{- define "gatehouse.secretFileEnv" -}}
{{- range . }}
- name: {{ .env }}_FILE
  value: /var/run/secrets/gatehouse/{{ .env }}
{{- end }}
{{- end -}}

{{/* The mount of a container's secret files: the volume's name. */}}
{{- define "gatehouse.secretFilesMount" -}}
- name: {{ . }}
  mountPath: /var/run/secrets/gatehouse
  readOnly: true
{{- end -}}

{{/* The volume of a container's secret files: (dict "name" volume "files" list). */}}
{{- define "gatehouse.secretFilesVolume" -}}
- name: {{ .name }}
  projected:
    defaultMode: 0400
    sources:
      {{- range .files }}
      - secret:
          name: {{ .name }}
          items:
            - key: {{ .key }}
              path: {{ .env }}
      {{- end }}
{{- end -}}

{{/* A database Job container's secret files: (dict "job" command "dsn" sources). */}}
{{- define "gatehouse.databaseJobSecretFiles" -}}
{{- $files := list (merge (dict "env" "GATEHOUSE_MYSQL_PRIMARY_DSN") .dsn.primary) (merge (dict "env" "GATEHOUSE_MYSQL_MIGRATION_DSN") .dsn.migration) -}}
{{- if eq .job "bootstrap" -}}
{{- $files = append $files (merge (dict "env" "GATEHOUSE_MYSQL_ADMIN_DSN") .dsn.admin) -}}
{{- end -}}
{{- toYaml (dict "files" $files) -}}
{{- end -}}

{{/* Where the auth pods find their MySQL DSNs: (dict name key) for the primary and the replicas. */}}
{{- define "gatehouse.mysqlDsnSources" -}}
{{- $connections := printf "%s-auth-connections" (include "gatehouse.fullname" .) -}}
{{- if and (not .Values.mysql.enabled) .Values.external.mysql.existingSecret -}}
primary: {name: {{ .Values.external.mysql.existingSecret }}, key: primary-dsn}
replicas: {name: {{ .Values.external.mysql.existingSecret }}, key: replica-dsns}
{{- else -}}
primary: {name: {{ $connections }}, key: mysql-primary-dsn}
replicas: {name: {{ $connections }}, key: mysql-replica-dsns}
{{- end -}}
{{- end -}}

{{- define "gatehouse.redisUrlSource" -}}
{{- if and (not .Values.redis.enabled) .Values.external.redis.existingSecret -}}
{name: {{ .Values.external.redis.existingSecret }}, key: url}
{{- else -}}
{name: {{ printf "%s-auth-connections" (include "gatehouse.fullname" .) }}, key: redis-url}
{{- end -}}
{{- end -}}

{{/* The ports of the data stores the auth pods connect to. */}}
{{- define "gatehouse.mysqlPort" -}}
{{- if .Values.mysql.enabled }}{{ .Values.mysql.port }}{{ else }}{{ .Values.external.mysql.port }}{{ end -}}
{{- end -}}

{{- define "gatehouse.redisPort" -}}
{{- if .Values.redis.enabled }}{{ .Values.redis.port }}{{ else }}{{ .Values.external.redis.port }}{{ end -}}
{{- end -}}

{{- define "gatehouse.etcdPort" -}}
{{- if .Values.etcd.enabled }}{{ .Values.etcd.clientPort }}{{ else }}{{ .Values.external.etcd.port }}{{ end -}}
{{- end -}}

{{/* Percent-encodes a URL userinfo part: urlquery writes spaces as "+", which URL parsers keep. */}}
{{- define "gatehouse.urlEscape" -}}
{{- . | urlquery | replace "+" "%20" -}}
{{- end -}}

{{/* Whether the release terminates TLS on its in-chart data stores (and needs their certificate). */}}
{{- define "gatehouse.dataStoresTls" -}}
{{- if or (and .Values.mysql.enabled .Values.mysql.tls.enabled) (and .Values.redis.enabled .Values.redis.tls.enabled) }}true{{ end -}}
{{- end -}}

{{/* The Secret (kubernetes.io/tls with ca.crt) of the in-chart data stores' certificate. */}}
{{- define "gatehouse.dataStoresTlsSecretName" -}}
{{- printf "%s-data-stores-tls" (include "gatehouse.fullname" .) -}}
{{- end -}}

{{/* DNS names the in-chart data stores are reached by: their Services and pods. */}}
{{- define "gatehouse.dataStoresDnsNames" -}}
{{- $fullname := include "gatehouse.fullname" . -}}
{{- $namespace := .Release.Namespace -}}
{{- $names := list -}}
{{- if .Values.mysql.enabled -}}
{{- $names = append $names (printf "%s-mysql-primary.%s.svc" $fullname $namespace) -}}
{{- $names = append $names (printf "%s-mysql-read.%s.svc" $fullname $namespace) -}}
{{- /* Every pod of either StatefulSet, however many replicas there are later. */ -}}
{{- $names = append $names (printf "*.%s-mysql-primary.%s.svc" $fullname $namespace) -}}
{{- $names = append $names (printf "*.%s-mysql-replica.%s.svc" $fullname $namespace) -}}
{{- end -}}
{{- if .Values.redis.enabled -}}
{{- $names = append $names (printf "%s-redis.%s.svc" $fullname $namespace) -}}
{{- end -}}
{{- toJson $names -}}
{{- end -}}

{{/* Where pods find the CA that verifies the in-chart data stores, and the volume that holds it. */}}
{{- define "gatehouse.dataStoresCaDir" -}}/etc/gatehouse/data-stores-ca{{- end -}}

{{/* The auth pods' and Jobs' volumes of the CAs their DSNs and URL name (in-chart or external). */}}
{{- define "gatehouse.storeCaVolumes" -}}
{{- if include "gatehouse.dataStoresTls" . }}
- name: data-stores-ca
  secret:
    secretName: {{ include "gatehouse.dataStoresTlsSecretName" . }}
    items:
      - key: ca.crt
        path: ca.crt
{{- end }}
{{- with .Values.external.mysql.caSecret }}
- name: mysql-ca
  secret:
    secretName: {{ . }}
    items:
      - key: ca.crt
        path: ca.crt
{{- end }}
{{- with .Values.external.redis.caSecret }}
- name: redis-ca
  secret:
    secretName: {{ . }}
    items:
      - key: ca.crt
        path: ca.crt
{{- end }}
{{- end -}}

{{- define "gatehouse.storeCaMounts" -}}
{{- if include "gatehouse.dataStoresTls" . }}
- name: data-stores-ca
  mountPath: {{ include "gatehouse.dataStoresCaDir" . }}
  readOnly: true
{{- end }}
{{- if .Values.external.mysql.caSecret }}
- name: mysql-ca
  mountPath: /etc/gatehouse/mysql-ca
  readOnly: true
{{- end }}
{{- if .Values.external.redis.caSecret }}
- name: redis-ca
  mountPath: /etc/gatehouse/redis-ca
  readOnly: true
{{- end }}
{{- end -}}

{{/* The options of an in-chart MySQL DSN: TLS verified against the data stores' CA, or none. */}}
{{- define "gatehouse.mysqlDsnOptions" -}}
{{- if and .Values.mysql.enabled .Values.mysql.tls.enabled -}}
?ssl-mode=verify-identity&ssl-ca={{ include "gatehouse.dataStoresCaDir" . }}/ca.crt
{{- end -}}
{{- end -}}

{{/* Where the Jobs find the migration and master DSNs: (dict name key). */}}
{{- define "gatehouse.mysqlJobDsnSources" -}}
{{- if and (not .Values.mysql.enabled) .Values.external.mysql.existingSecret -}}
primary: {name: {{ .Values.external.mysql.existingSecret }}, key: primary-dsn}
migration: {name: {{ .Values.external.mysql.existingSecret }}, key: migration-dsn}
admin: {name: {{ .Values.external.mysql.existingSecret }}, key: admin-dsn}
{{- else -}}
primary: {name: {{ printf "%s-mysql-jobs" (include "gatehouse.fullname" .) }}, key: primary-dsn}
migration: {name: {{ printf "%s-mysql-jobs" (include "gatehouse.fullname" .) }}, key: migration-dsn}
admin: {name: {{ printf "%s-mysql-jobs" (include "gatehouse.fullname" .) }}, key: admin-dsn}
{{- end -}}
{{- end -}}

{{/* A database Job's container, "bootstrap" or "migrate": (dict "context" $ "job" j "dsn" sources). */}}
{{- define "gatehouse.databaseJobContainer" -}}
{{- $ := .context -}}
- name: {{ .job.command }}
  image: {{ include "gatehouse.image" (dict "image" $.Values.auth.image "context" $) }}
  imagePullPolicy: {{ $.Values.auth.image.pullPolicy }}
  args: [{{ .job.command | quote }}]
  env:
    {{- /* The master user's DSN (bootstrap): in this container's volume only. */}}
    {{- include "gatehouse.secretFileEnv" (include "gatehouse.databaseJobSecretFiles" (dict "job" .job.command "dsn" .dsn) | fromYaml).files | nindent 4 }}
    - name: GATEHOUSE_LOG_LEVEL
      value: {{ $.Values.auth.logLevel | quote }}
  resources:
    requests:
      cpu: 100m
      memory: 128Mi
    limits:
      memory: 256Mi
  securityContext:
    {{- include "gatehouse.containerSecurityContext" $ | nindent 4 }}
  volumeMounts:
    - name: tmp
      mountPath: /tmp
    {{- include "gatehouse.secretFilesMount" (printf "secrets-%s" .job.command) | nindent 4 }}
    {{- include "gatehouse.storeCaMounts" $ | nindent 4 }}
{{- end -}}

{{/* etcd access of the tiers: TLS, one user per tier, the Secrets of their passwords. */}}

{{/* The Secret (kubernetes.io/tls with ca.crt) of the in-chart etcd's certificate. */}}
{{- define "gatehouse.etcdTlsSecretName" -}}
{{- printf "%s-etcd-tls" (include "gatehouse.fullname" .) -}}
{{- end -}}

{{/* The CN of the in-chart etcd members' certificate, which a peer must present
(ETCD_PEER_CERT_ALLOWED_CN): <fullname>-etcd.<namespace>.svc; with cert-manager, which refuses
a CN over 64 bytes, a longer one becomes "etcd-" and a digest of it, as unique. */}}
{{- define "gatehouse.etcdMemberCommonName" -}}
{{- $domain := printf "%s-etcd.%s.svc" (include "gatehouse.fullname" .) .Release.Namespace -}}
{{- if and .Values.tls.certManager.enabled (gt (len $domain) 64) -}}
{{- printf "etcd-%s" (sha256sum $domain | trunc 40) -}}
{{- else -}}
{{- $domain -}}
{{- end -}}
{{- end -}}

{{/* The Secret whose ca.crt verifies etcd; empty: plaintext (an external etcd without caSecret). */}}
{{- define "gatehouse.etcdCaSecretName" -}}
{{- if .Values.etcd.enabled }}{{ include "gatehouse.etcdTlsSecretName" . }}{{ else }}{{ .Values.external.etcd.caSecret }}{{ end -}}
{{- end -}}

{{/* The etcd user of a tier, "auth" or "http": (dict "context" $ "tier" t); empty: none. */}}
{{- define "gatehouse.etcdUser" -}}
{{- if .context.Values.etcd.enabled -}}
{{- index .context.Values.etcd.auth (printf "%sUser" .tier) -}}
{{- else -}}
{{- (index .context.Values.external.etcd .tier).username -}}
{{- end -}}
{{- end -}}

{{/* The Secret with key `password` of an etcd user, "root", "auth" or "http": (dict "context" $ "tier" t). */}}
{{- define "gatehouse.etcdPasswordSecretName" -}}
{{- $generated := printf "%s-etcd-%s-password" (include "gatehouse.fullname" .context) .tier -}}
{{- if .context.Values.etcd.enabled -}}
{{- index .context.Values.etcd.auth.existingSecrets .tier | default $generated -}}
{{- else -}}
{{- (index .context.Values.external.etcd .tier).existingSecret | default $generated -}}
{{- end -}}
{{- end -}}

{{/* "true" when the in-chart etcd asks its clients for a certificate (etcd-client-tls.yaml). */}}
{{- define "gatehouse.etcdClientCertAuth" -}}
{{- if and .Values.etcd.enabled .Values.etcd.clientCertAuth }}true{{ end -}}
{{- end -}}

{{/* "true" when etcd.auth.existingClientCertSecrets names the client certificates: the
chart then makes none (etcd-client-tls.yaml checks that all five are named). */}}
{{- define "gatehouse.etcdClientCertsExisting" -}}
{{- if .Values.etcd.auth.existingClientCertSecrets.ca }}true{{ end -}}
{{- end -}}

{{/* The Secret whose `ca.crt` is the CA etcd trusts for clients. */}}
{{- define "gatehouse.etcdClientCaSecretName" -}}
{{- .Values.etcd.auth.existingClientCertSecrets.ca | default (printf "%s-etcd-client-ca" (include "gatehouse.fullname" .)) -}}
{{- end -}}

{{/* The etcd client CA as JSON {"cert", "key"} (base64 PEM): kept (`lookup`), or generated
once per render, so that etcd-client-tls.yaml signs with the CA whose digest etcd.yaml's pod
template carries. Remembered on the root context, which the chart's templates share (not in
.Values, which a parent chart could print). Call it with the root context. */}}
{{- define "gatehouse.etcdClientCa" -}}
{{- if not (hasKey . "__generatedEtcdClientCa") -}}
{{- $kept := (lookup "v1" "Secret" .Release.Namespace (include "gatehouse.etcdClientCaSecretName" .)).data | default dict -}}
{{- $cert := index $kept "tls.crt" | default "" -}}
{{- $key := index $kept "tls.key" | default "" -}}
{{- if not (and $cert $key) -}}
{{- $generated := genCA (printf "%s etcd client CA" (include "gatehouse.fullname" .)) 3650 -}}
{{- $cert = $generated.Cert | b64enc -}}
{{- $key = $generated.Key | b64enc -}}
{{- end -}}
{{- $_ := set . "__generatedEtcdClientCa" (dict "cert" $cert "key" $key) -}}
{{- end -}}
{{- index . "__generatedEtcdClientCa" | toJson -}}
{{- end -}}

{{/* The Secret (kubernetes.io/tls) of a client certificate for etcd, "auth", "http",
"bootstrap" or "etcdctl" (the members'): (dict "context" $ "tier" t); with an external etcd,
the tier's clientCertSecret; empty: none. */}}
{{- define "gatehouse.etcdClientCertSecretName" -}}
{{- if include "gatehouse.etcdClientCertAuth" .context -}}
{{- index .context.Values.etcd.auth.existingClientCertSecrets .tier | default (printf "%s-etcd-client-%s" (include "gatehouse.fullname" .context) .tier) -}}
{{- else if and (not .context.Values.etcd.enabled) (has .tier (list "auth" "http")) -}}
{{- (index .context.Values.external.etcd .tier).clientCertSecret -}}
{{- end -}}
{{- end -}}

{{- define "gatehouse.etcdCaDir" -}}/etc/gatehouse/etcd-ca{{- end -}}
{{- define "gatehouse.etcdPasswordDir" -}}/etc/gatehouse/etcd-password{{- end -}}
{{- define "gatehouse.etcdClientCertDir" -}}/etc/gatehouse/etcd-client{{- end -}}

{{/* A tier's etcd variables besides the endpoints: its user, password file, CA and client
certificate. (dict "context" $ "tier" t) */}}
{{- define "gatehouse.etcdClientEnv" -}}
{{- if include "gatehouse.etcdCaSecretName" .context }}
- name: GATEHOUSE_ETCD_CA_FILE
  value: {{ include "gatehouse.etcdCaDir" . }}/ca.crt
{{- end }}
{{- if include "gatehouse.etcdClientCertSecretName" . }}
# Read at each new etcd connection: a replaced certificate needs no restart.
- name: GATEHOUSE_ETCD_CERT_FILE
  value: {{ include "gatehouse.etcdClientCertDir" . }}/tls.crt
- name: GATEHOUSE_ETCD_KEY_FILE
  value: {{ include "gatehouse.etcdClientCertDir" . }}/tls.key
{{- end }}
{{- with include "gatehouse.etcdUser" . }}
- name: GATEHOUSE_ETCD_USERNAME
  value: {{ . | quote }}
# A file, read at each new etcd connection: a changed password needs no restart.
- name: GATEHOUSE_ETCD_PASSWORD_FILE
  value: {{ include "gatehouse.etcdPasswordDir" $ }}/password
{{- end }}
{{- end -}}

{{/* The volumes behind gatehouse.etcdClientEnv: etcd's CA, the tier's own client
certificate and password only. */}}
{{- define "gatehouse.etcdClientVolumes" -}}
{{- with include "gatehouse.etcdCaSecretName" .context }}
- name: etcd-ca
  secret:
    secretName: {{ . }}
    items:
      - key: ca.crt
        path: ca.crt
{{- end }}
{{- with include "gatehouse.etcdClientCertSecretName" . }}
- name: etcd-client
  secret:
    secretName: {{ . }}
    defaultMode: 0400
    items:
      - key: tls.crt
        path: tls.crt
      - key: tls.key
        path: tls.key
{{- end }}
{{- if include "gatehouse.etcdUser" . }}
- name: etcd-password
  secret:
    secretName: {{ include "gatehouse.etcdPasswordSecretName" . }}
    defaultMode: 0400
    items:
      - key: password
        path: password
{{- end }}
{{- end -}}

{{- define "gatehouse.etcdClientMounts" -}}
{{- if include "gatehouse.etcdCaSecretName" .context }}
- name: etcd-ca
  mountPath: {{ include "gatehouse.etcdCaDir" . }}
  readOnly: true
{{- end }}
{{- if include "gatehouse.etcdClientCertSecretName" . }}
- name: etcd-client
  mountPath: {{ include "gatehouse.etcdClientCertDir" . }}
  readOnly: true
{{- end }}
{{- if include "gatehouse.etcdUser" . }}
- name: etcd-password
  mountPath: {{ include "gatehouse.etcdPasswordDir" . }}
  readOnly: true
{{- end }}
{{- end -}}

{{/* The HTTP tier's settings in its ConfigMap (http.extraEnv follows them). */}}
{{- define "gatehouse.httpConfig" -}}
GATEHOUSE_HTTP_HOST: {{ .Values.http.bindAddress | quote }}
GATEHOUSE_HTTP_PORT: {{ .Values.http.port | quote }}
GATEHOUSE_HTTP_OPS_PORT: {{ .Values.http.opsPort | quote }}
# The internet reaches the API port: /metrics is served on the ops port only.
GATEHOUSE_METRICS_ON_API_PORT: "false"
GATEHOUSE_HTTP_WORKERS: {{ .Values.http.workers | quote }}
GATEHOUSE_METRICS_DIR: /var/run/gatehouse/metrics
GATEHOUSE_ETCD_ENDPOINTS: {{ include "gatehouse.etcdEndpoints" . | quote }}
GATEHOUSE_CALL_TIMEOUT: {{ .Values.http.callTimeoutSeconds | quote }}
GATEHOUSE_POOL_MAX_CONNECTIONS: {{ .Values.http.poolMaxConnections | quote }}
GATEHOUSE_COOKIE_SECURE: {{ .Values.http.cookieSecure | quote }}
GATEHOUSE_TRUSTED_PROXIES: {{ join "," .Values.http.trustedProxies | quote }}
GATEHOUSE_AUTH_REPLICA_CIDRS: {{ join "," .Values.http.authReplicaCidrs | quote }}
GATEHOUSE_LOG_LEVEL: {{ .Values.http.logLevel | quote }}
{{ include "gatehouse.rpcTlsConfig" (dict "context" . "operator" false) }}
{{- end -}}

{{/* The auth service's settings in its ConfigMap (auth.extraEnv follows them). */}}
{{- define "gatehouse.authConfig" -}}
GATEHOUSE_AUTH_HOST: {{ .Values.auth.bindAddress | quote }}
GATEHOUSE_AUTH_PORT: {{ .Values.auth.port | quote }}
GATEHOUSE_OPS_PORT: {{ .Values.auth.opsPort | quote }}
GATEHOUSE_RELEASE: {{ include "gatehouse.release" . | quote }}
GATEHOUSE_ETCD_ENDPOINTS: {{ include "gatehouse.etcdEndpoints" . | quote }}
GATEHOUSE_MIGRATE_ON_START: {{ .Values.auth.migrateOnStart | quote }}
GATEHOUSE_MYSQL_POOL_SIZE: {{ .Values.auth.mysqlPoolSize | quote }}
GATEHOUSE_BCRYPT_COST: {{ .Values.auth.bcryptCost | quote }}
GATEHOUSE_TOKEN_TTL: {{ .Values.auth.tokenTtlSeconds | quote }}
GATEHOUSE_DRAIN_DELAY: {{ .Values.auth.drain.delaySeconds | quote }}
GATEHOUSE_DRAIN_GRACE: {{ .Values.auth.drain.graceSeconds | quote }}
GATEHOUSE_LOG_LEVEL: {{ .Values.auth.logLevel | quote }}
{{ include "gatehouse.rpcTlsConfig" (dict "context" . "operator" true) }}
{{- end -}}

{{/* What the Deployments set in a container's `env` (Secrets, the pod's own fields, files):
it takes precedence over the ConfigMap, so an extraEnv entry of the same name is ignored. */}}
{{- define "gatehouse.podEnvNames" -}}
{{- $etcd := list "GATEHOUSE_ETCD_CA_FILE" "GATEHOUSE_ETCD_CERT_FILE" "GATEHOUSE_ETCD_KEY_FILE" "GATEHOUSE_ETCD_USERNAME" "GATEHOUSE_ETCD_PASSWORD_FILE" -}}
{{- if eq . "http" -}}
{{- concat (list "GATEHOUSE_CSRF_SECRET" "GATEHOUSE_CSRF_SECRET_FILE") $etcd | toJson -}}
{{- else -}}
{{- $secrets := list "GATEHOUSE_PEPPERS" "GATEHOUSE_JWT_PRIVATE_KEY" "GATEHOUSE_DEVICE_COOKIE_SECRET" "GATEHOUSE_MYSQL_PRIMARY_DSN" "GATEHOUSE_MYSQL_REPLICA_DSNS" "GATEHOUSE_REDIS_URL" -}}
{{- $files := list -}}
{{- range $secrets }}{{ $files = append $files (printf "%s_FILE" .) }}{{ end -}}
{{- concat (list "GATEHOUSE_INSTANCE_ID" "GATEHOUSE_AUTH_ADVERTISE_HOST" "GATEHOUSE_HASH_THREADS" "GATEHOUSE_JWT_KEYS_DIR") $secrets $files $etcd | toJson -}}
{{- end -}}
{{- end -}}

{{/* The service's secret settings (secret=True in its settings class) the chart does not set:
an extraEnv entry would put one in plain text in the ConfigMap. */}}
{{- define "gatehouse.unsetSecretNames" -}}
{{- if eq . "http" -}}
{{- list "GATEHOUSE_ETCD_PASSWORD" | toJson -}}
{{- else -}}
{{- list "GATEHOUSE_ETCD_PASSWORD" "GATEHOUSE_MYSQL_MIGRATION_DSN" | toJson -}}
{{- end -}}
{{- end -}}

{{- /*
Refuses an extraEnv entry of a variable the chart sets itself, or of a secret, "http" or "auth": (dict "context"
$ "tier" t). In the ConfigMap it would silently replace the chart's value, around the checks made
on that value (terminationGracePeriodSeconds against GATEHOUSE_DRAIN_GRACE or
GATEHOUSE_CALL_TIMEOUT); against the container's env it would be ignored, a secret among them
left in plain text in the ConfigMap.
*/ -}}
{{- define "gatehouse.checkExtraEnv" -}}
{{- $values := index .context.Values .tier -}}
{{- $config := include (printf "gatehouse.%sConfig" .tier) .context | fromYaml -}}
{{- $env := include "gatehouse.podEnvNames" .tier | fromJsonArray -}}
{{- $secrets := include "gatehouse.unsetSecretNames" .tier | fromJsonArray -}}
{{- $refused := list -}}
{{- $secret := list -}}
{{- range $name := keys $values.extraEnv | sortAlpha -}}
{{- if or (hasKey $config $name) (has $name $env) -}}
{{- $refused = append $refused (printf "%s.extraEnv.%s" $.tier $name) -}}
{{- else if has $name $secrets -}}
{{- $secret = append $secret (printf "%s.extraEnv.%s" $.tier $name) -}}
{{- end -}}
{{- end -}}
{{- $problems := list -}}
{{- if $refused -}}
{{- $problems = append $problems (printf "%s: the chart sets these variables itself, from its own values or Secrets: an extraEnv entry would replace one around the chart's checks, or be ignored (a secret then left in plain text in the ConfigMap). Set the chart's value for each instead (values.yaml, the chart README's values table)" (join ", " $refused)) -}}
{{- end -}}
{{- if $secret -}}
{{- $problems = append $problems (printf "%s: a secret, which extraEnv would put in plain text in the ConfigMap; the chart passes secrets from Secrets only (the chart README, Secrets)" (join ", " $secret)) -}}
{{- end -}}
{{- if $problems -}}
{{- fail (join "; " $problems) -}}
{{- end -}}
{{- end -}}

{{- /*
Refuses values that let a client choose the address the login throttle counts it by, or that put
every client behind a proxy under one address. The HTTP tier believes X-Forwarded-For only from a
peer in http.trustedProxies; the peer must then be a proxy no client can bypass.
*/ -}}
{{- define "gatehouse.checkClientAddresses" -}}
{{- $http := .Values.http -}}
{{- $np := .Values.networkPolicy -}}
{{- $trusted := $http.trustedProxies -}}
{{- if hasKey $http.extraEnv "GATEHOUSE_TRUSTED_PROXIES" -}}
{{- fail "http.extraEnv.GATEHOUSE_TRUSTED_PROXIES: set http.trustedProxies instead, which the chart checks against who may reach the HTTP port" -}}
{{- end -}}
{{- if and $trusted $np.enabled (not $np.httpIngressFrom) -}}
{{- fail "http.trustedProxies is set while networkPolicy.httpIngressFrom is empty: every pod of the cluster may then reach the HTTP port from an address in http.trustedProxies and write its own X-Forwarded-For, choosing the client address the login throttle counts it by. Set networkPolicy.httpIngressFrom to select the proxies only (e.g. [{namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: ingress-nginx}}}]), or empty http.trustedProxies if no proxy is in front" -}}
{{- end -}}
{{- if and (or $http.ingress.enabled $http.httpRoute.enabled) (not $trusted) -}}
{{- fail "http.ingress/http.httpRoute is enabled while http.trustedProxies is empty: the HTTP tier would take the proxy for the client, so every client would share its address and one client's failed logins would throttle everybody. Set http.trustedProxies to the addresses of the proxy pods (the ingress controller's or gateway's, e.g. [10.42.0.0/16]) and networkPolicy.httpIngressFrom to select those pods only (e.g. [{namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: ingress-nginx}}}])" -}}
{{- end -}}
{{- if and $trusted (has $http.service.type (list "LoadBalancer" "NodePort")) (ne $http.service.externalTrafficPolicy "Local") -}}
{{- fail (printf "http.service.type %s with http.trustedProxies needs http.service.externalTrafficPolicy: Local. With Cluster, kube-proxy replaces an outside client's address by a node's, which http.trustedProxies may cover: the client's own X-Forwarded-For would then be believed" $http.service.type) -}}
{{- end -}}
{{- end -}}
