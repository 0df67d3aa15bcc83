{{- /*
Mutual TLS on the auth RPC (tls.rpc; README "Trust boundaries"): the auth pods' server
certificate, the HTTP pods' client certificate and the operator's, each in a Secret with
ca.crt, tls.crt and tls.key, mounted as a directory (not subPath) so that the kubelet updates
the files when the Secret changes and both tiers reload them (GATEHOUSE_RPC_TLS_RELOAD_INTERVAL).
*/ -}}

{{/* Whether the auth RPC runs over mutual TLS. */}}
{{- define "gatehouse.rpcTls" -}}
{{- if eq .Values.tls.rpc.mode "mtls" }}true{{ end -}}
{{- end -}}

{{/* The DNS name of the auth server certificate, which callers check. */}}
{{- define "gatehouse.rpcServerName" -}}
{{- .Values.tls.rpc.serverName | default (printf "%s-auth.%s.svc" (include "gatehouse.fullname" .) .Release.Namespace) -}}
{{- end -}}

{{/* The trust domain of the RPC identities (GATEHOUSE_RPC_TRUST_DOMAIN): this release's own,
so that a certificate another release gets from the same issuer is no one here. */}}
{{- define "gatehouse.rpcTrustDomain" -}}
{{- $domain := .Values.tls.rpc.trustDomain | default (printf "%s.%s" (include "gatehouse.fullname" .) .Release.Namespace) -}}
{{- if not (regexMatch "^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$" $domain) -}}
{{- fail (printf "tls.rpc.trustDomain %q: lowercase DNS labels joined by dots" $domain) -}}
{{- end -}}
{{- $domain -}}
{{- end -}}

{{/* Client identities (services/auth/roles.py), by the role of their certificate: URI SANs,
and the DNS SANs that stand for them (services/foundation/rpc/tls.py). */}}
{{- define "gatehouse.rpcIdentities" -}}
{{- $domain := include "gatehouse.rpcTrustDomain" . -}}
{{- range $role := list "http" "operator" }}
{{ $role }}:
  uri: {{ printf "spiffe://%s/%s" $domain $role | quote }}
  dnsName: {{ printf "%s.%s.identity.invalid" $role $domain | quote }}
{{- end }}
{{- end -}}

{{/* Whether the three Secrets are the user's (tls.rpc.existingSecrets: all three or none). */}}
{{- define "gatehouse.rpcExistingSecrets" -}}
{{- $own := .Values.tls.rpc.existingSecrets -}}
{{- if or $own.server $own.http $own.operator -}}
{{- if not (and $own.server $own.http $own.operator) -}}
{{- fail "tls.rpc.existingSecrets: name all three Secrets (server, http, operator) or none" -}}
{{- end -}}
true
{{- end -}}
{{- end -}}

{{/* The Secret of one certificate: (dict "context" $ "role" "server"|"http"|"operator"). */}}
{{- define "gatehouse.rpcTlsSecretName" -}}
{{- index .context.Values.tls.rpc.existingSecrets .role | default (printf "%s-rpc-%s-tls" (include "gatehouse.fullname" .context) .role) -}}
{{- end -}}

{{- define "gatehouse.rpcTlsDir" -}}/etc/gatehouse/rpc-tls{{- end -}}
{{- define "gatehouse.rpcOperatorTlsDir" -}}/etc/gatehouse/rpc-operator-tls{{- end -}}

{{/* ConfigMap entries of a tier: (dict "context" $ "operator" bool); the operator's
certificate is the auth pods' only, for the `gatehouse` command beside the replica. */}}
{{- define "gatehouse.rpcTlsConfig" -}}
{{- $dir := include "gatehouse.rpcTlsDir" .context -}}
GATEHOUSE_RPC_TLS: {{ .context.Values.tls.rpc.mode | quote }}
{{- if include "gatehouse.rpcTls" .context }}
GATEHOUSE_RPC_TLS_CA: {{ printf "%s/ca.crt" $dir | quote }}
GATEHOUSE_RPC_TLS_CERT: {{ printf "%s/tls.crt" $dir | quote }}
GATEHOUSE_RPC_TLS_KEY: {{ printf "%s/tls.key" $dir | quote }}
GATEHOUSE_AUTH_TLS_SERVER_NAME: {{ include "gatehouse.rpcServerName" .context | quote }}
GATEHOUSE_RPC_TRUST_DOMAIN: {{ include "gatehouse.rpcTrustDomain" .context | quote }}
{{- if .operator }}
GATEHOUSE_CLI_TLS_CERT: {{ printf "%s/tls.crt" (include "gatehouse.rpcOperatorTlsDir" .context) | quote }}
GATEHOUSE_CLI_TLS_KEY: {{ printf "%s/tls.key" (include "gatehouse.rpcOperatorTlsDir" .context) | quote }}
{{- end }}
{{- else if .operator }}
{{- /* Plaintext: callers over TCP get the HTTP tier's calls only; the operator's come over
this socket, in the auth container's own /tmp (an emptyDir no other container mounts), in a
folder the replica makes its user's only. */}}
GATEHOUSE_OPERATOR_SOCKET: "/tmp/gatehouse/operator.sock"
{{- end }}
{{- end -}}

{{/* Volumes of a tier: (dict "context" $ "role" "server"|"http" "operator" bool). */}}
{{- define "gatehouse.rpcTlsVolumes" -}}
{{- if include "gatehouse.rpcTls" .context }}
- name: rpc-tls
  secret:
    secretName: {{ include "gatehouse.rpcTlsSecretName" (dict "context" .context "role" .role) }}
    defaultMode: 0400
{{- if .operator }}
- name: rpc-operator-tls
  secret:
    secretName: {{ include "gatehouse.rpcTlsSecretName" (dict "context" .context "role" "operator") }}
    defaultMode: 0400
{{- end }}
{{- end }}
{{- end -}}

{{- define "gatehouse.rpcTlsMounts" -}}
{{- if include "gatehouse.rpcTls" .context }}
- name: rpc-tls
  mountPath: {{ include "gatehouse.rpcTlsDir" .context }}
  readOnly: true
{{- if .operator }}
- name: rpc-operator-tls
  mountPath: {{ include "gatehouse.rpcOperatorTlsDir" .context }}
  readOnly: true
{{- end }}
{{- end }}
{{- end -}}
