{{/*
Names and labels. With the release named "mcp-authz" every object is named as `mcp-authz render istio`
names it (tests/unit/render/test_helm_chart.py compares the two).
*/}}
{{- define "mcp-authz.name" -}}
{{- .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "mcp-authz.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "mcp-authz.selectorLabels" -}}
app.kubernetes.io/name: {{ include "mcp-authz.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "mcp-authz.labels" -}}
app.kubernetes.io/name: {{ include "mcp-authz.name" . }}
app.kubernetes.io/part-of: mcp-authz
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{- end -}}

{{- define "mcp-authz.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "mcp-authz.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "mcp-authz.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}

{{/* The config's sections the Istio objects read, with the schema's defaults. */}}
{{- define "mcp-authz.envoy" -}}
{{- $envoy := default dict .Values.config.envoy -}}
{{- dict "timeout_ms" (default 1000 $envoy.timeout_ms) "max_request_bytes" (default 1048576 $envoy.max_request_bytes) "authorizer" (default "grpc" $envoy.authorizer) | toJson -}}
{{- end -}}

{{- define "mcp-authz.extProc" -}}
{{- $proc := default dict .Values.config.ext_proc -}}
{{- dict "failure" (default "closed" $proc.failure) "message_timeout_ms" (default 1000 $proc.message_timeout_ms) | toJson -}}
{{- end -}}

{{/* Whether several replicas share their state: a Redis URL in the config or from the redis values. */}}
{{- define "mcp-authz.redisWired" -}}
{{- if or .Values.redis.host .Values.redis.urlSecret.name -}}true{{- end -}}
{{- end -}}

{{- define "mcp-authz.sharedStore" -}}
{{- $store := default dict .Values.config.store -}}
{{- if or $store.url (include "mcp-authz.redisWired" .) -}}true{{- end -}}
{{- end -}}

{{/* More than one replica: the replicas value, or an HPA. */}}
{{- define "mcp-authz.scaled" -}}
{{- if or (gt (int .Values.replicas) 1) .Values.autoscaling.enabled -}}true{{- end -}}
{{- end -}}

{{/* Refuse several replicas with the in-memory store (docs/shared-state.md), unless the config accepts it. */}}
{{- define "mcp-authz.checkReplicas" -}}
{{- $store := default dict .Values.config.store -}}
{{- if and (include "mcp-authz.scaled" .) (not (include "mcp-authz.sharedStore" .)) (not $store.allow_inconsistent_state) -}}
{{- fail "replicas > 1 (or autoscaling.enabled) with the in-memory store: each replica would keep its own revocations, session bindings and rate limits. Set redis.host or redis.urlSecret (or config.store.url), or config.store.allow_inconsistent_state: true to accept it" -}}
{{- end -}}
{{- end -}}

{{/* ${NAME} references of a text, sorted and unique (authz.render.authorizer_pod.env_references). */}}
{{- define "mcp-authz.envNames" -}}
{{- $names := list -}}
{{- range regexFindAll "\\$\\{[A-Za-z_][A-Za-z0-9_]*" . -1 -}}
{{- $names = append $names (trimPrefix "${" .) -}}
{{- end -}}
{{- $names | uniq | sortAlpha | toJson -}}
{{- end -}}

{{/* Issuer name -> Secret key of its local_key_file (development issuers only). */}}
{{- define "mcp-authz.keyFiles" -}}
{{- $keys := dict -}}
{{- range .Values.config.issuers -}}
{{- if .local_key_file -}}
{{- $_ := set $keys .name (printf "%s.pem" .name) -}}
{{- end -}}
{{- end -}}
{{- $keys | toJson -}}
{{- end -}}

{{/*
The config a pod runs (authz.render.authorizer_pod.pod_config): `listen` from `ports` on all interfaces,
key files at their Secret mount, and with the redis values, store.url as ${MCP_AUTHZ_REDIS_URL}.
*/}}
{{- define "mcp-authz.podConfig" -}}
{{- $config := deepCopy .Values.config -}}
{{- $http := ternary (printf "0.0.0.0:%d" (int .Values.ports.http)) "" (gt (int .Values.ports.http) 0) -}}
{{- $_ := set $config "listen" (dict "grpc" (printf "0.0.0.0:%d" (int .Values.ports.grpc)) "discovery" (printf "0.0.0.0:%d" (int .Values.ports.discovery)) "http" $http) -}}
{{- $keys := include "mcp-authz.keyFiles" . | fromJson -}}
{{- range $config.issuers -}}
{{- if hasKey $keys .name -}}
{{- $_ := set . "local_key_file" (printf "/var/run/secrets/mcp-authz/%s" (get $keys .name)) -}}
{{- end -}}
{{- end -}}
{{- if include "mcp-authz.redisWired" . -}}
{{- $store := default dict $config.store -}}
{{- $_ := set $store "url" "${MCP_AUTHZ_REDIS_URL}" -}}
{{- $_ := set $config "store" $store -}}
{{- end -}}
{{- toYaml $config -}}
{{- end -}}

{{/* The container's environment: Redis first (its URL may use the password), then each ${NAME}. */}}
{{- define "mcp-authz.env" -}}
{{- $env := list -}}
{{- $redis := .Values.redis -}}
{{- if $redis.urlSecret.name -}}
{{- $env = append $env (dict "name" "MCP_AUTHZ_REDIS_URL" "valueFrom" (dict "secretKeyRef" (dict "name" $redis.urlSecret.name "key" $redis.urlSecret.key))) -}}
{{- else if $redis.host -}}
{{- $auth := "" -}}
{{- if $redis.passwordSecret.name -}}
{{- $env = append $env (dict "name" "MCP_AUTHZ_REDIS_PASSWORD" "valueFrom" (dict "secretKeyRef" (dict "name" $redis.passwordSecret.name "key" $redis.passwordSecret.key))) -}}
{{- $auth = ":$(MCP_AUTHZ_REDIS_PASSWORD)@" -}}
{{- end -}}
{{- $query := ternary "?ssl_ca_certs=/var/run/secrets/mcp-authz-redis/ca.pem" "" (and $redis.tls (ne $redis.caSecret.name "")) -}}
{{- $url := printf "%s://%s%s:%d/%d%s" (ternary "rediss" "redis" $redis.tls) $auth $redis.host (int $redis.port) (int $redis.db) $query -}}
{{- $env = append $env (dict "name" "MCP_AUTHZ_REDIS_URL" "value" $url) -}}
{{- end -}}
{{- if not (or .Values.existingConfig.configMap .Values.existingConfig.secret) -}}
{{- range include "mcp-authz.envNames" (toYaml .Values.config) | fromJsonArray -}}
{{- if ne . "MCP_AUTHZ_REDIS_URL" -}}
{{- $env = append $env (dict "name" . "valueFrom" (dict "secretKeyRef" (dict "name" $.Values.secretEnv.name "key" . "optional" false))) -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- $env | toJson -}}
{{- end -}}

{{- define "mcp-authz.ports" -}}
- name: grpc-authz
  containerPort: {{ .Values.ports.grpc }}
  protocol: TCP
- name: http-discovery
  containerPort: {{ .Values.ports.discovery }}
  protocol: TCP
{{- if gt (int .Values.ports.http) 0 }}
- name: http-authz
  containerPort: {{ .Values.ports.http }}
  protocol: TCP
{{- end }}
{{- end -}}

{{/* Startup /healthz, readiness /readyz on the discovery port; liveness grpc.health.v1 when `grpc`. */}}
{{- define "mcp-authz.probes" -}}
{{- $root := index . 0 -}}
{{- $grpc := index . 1 -}}
startupProbe:
  httpGet:
    path: /healthz
    port: {{ $root.Values.ports.discovery }}
  periodSeconds: {{ $root.Values.probes.startup.periodSeconds }}
  failureThreshold: {{ $root.Values.probes.startup.failureThreshold }}
readinessProbe:
  httpGet:
    path: /readyz
    port: {{ $root.Values.ports.discovery }}
  periodSeconds: {{ $root.Values.probes.readiness.periodSeconds }}
livenessProbe:
  {{- if $grpc }}
  grpc:
    port: {{ $root.Values.ports.grpc }}
  {{- else }}
  httpGet:
    path: /healthz
    port: {{ $root.Values.ports.discovery }}
  {{- end }}
  periodSeconds: {{ $root.Values.probes.liveness.periodSeconds }}
{{- end -}}

{{/* The configured MCP servers, and those with filter_lists. */}}
{{- define "mcp-authz.listServers" -}}
{{- $names := list -}}
{{- range .Values.config.servers -}}
{{- if .filter_lists -}}{{- $names = append $names .name -}}{{- end -}}
{{- end -}}
{{- $names | toJson -}}
{{- end -}}

{{/* Envoy's ext_proc filter and local reply of `mcp-authz render envoy` (authz.render.envoy.ext_proc_filter). */}}
{{- define "mcp-authz.extProcFilter" -}}
{{- $root := index . 0 -}}
{{- $cluster := index . 1 -}}
{{- $proc := include "mcp-authz.extProc" $root | fromJson -}}
name: envoy.filters.http.ext_proc
typed_config:
  '@type': type.googleapis.com/envoy.extensions.filters.http.ext_proc.v3.ExternalProcessor
  grpc_service:
    envoy_grpc:
      cluster_name: {{ $cluster }}
  {{- if eq $proc.failure "open" }}
  failure_mode_allow: true
  {{- end }}
  processing_mode:
    request_header_mode: SEND
    response_header_mode: SKIP
    request_trailer_mode: SKIP
    response_trailer_mode: SKIP
  message_timeout: {{ include "mcp-authz.seconds" $proc.message_timeout_ms }}
  allow_mode_override: true
  metadata_options:
    forwarding_namespaces:
      untyped:
      - envoy.filters.http.ext_authz
  status_on_error:
    code: ServiceUnavailable
  {{- if ne $proc.failure "open" }}
  failure_mode_allow: false
  {{- end }}
{{- end -}}

{{- define "mcp-authz.extProcLocalReply" -}}
mappers:
- filter:
    extension_filter:
      name: envoy.access_loggers.extension_filters.cel
      typed_config:
        '@type': type.googleapis.com/envoy.extensions.access_loggers.filters.cel.v3.ExpressionFilter
        expression: response.code_details.startsWith('ext_proc')
  body_format_override:
    json_format:
      jsonrpc: '2.0'
      id: '%DYNAMIC_METADATA(envoy.filters.http.ext_authz:mcp_authz:id)%'
      error:
        code: -32603
        message: list filtering unavailable
    content_type: application/json
{{- end -}}

{{/* Milliseconds as a protobuf duration / Istio timeout: 1000 -> 1s, 300 -> 0.3s. */}}
{{- define "mcp-authz.seconds" -}}
{{- $ms := int . -}}
{{- if eq (mod $ms 1000) 0 -}}{{ div $ms 1000 }}s{{- else -}}{{ divf $ms 1000 }}s{{- end -}}
{{- end -}}

{{/* The EnvoyFilter inserting the list filter after the CUSTOM ext_authz of the selected sidecars. */}}
{{- define "mcp-authz.listFilterPatches" -}}
{{- $root := index . 0 -}}
{{- $cluster := index . 1 -}}
- applyTo: HTTP_FILTER
  match:
    context: SIDECAR_INBOUND
    listener:
      filterChain:
        filter:
          name: envoy.filters.network.http_connection_manager
          subFilter:
            name: envoy.filters.http.ext_authz
  patch:
    operation: INSERT_AFTER
    value:
      {{- include "mcp-authz.extProcFilter" (list $root $cluster) | nindent 6 }}
- applyTo: NETWORK_FILTER
  match:
    context: SIDECAR_INBOUND
    listener:
      filterChain:
        filter:
          name: envoy.filters.network.http_connection_manager
  patch:
    operation: MERGE
    value:
      typed_config:
        '@type': type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
        local_reply_config:
          {{- include "mcp-authz.extProcLocalReply" $root | nindent 10 }}
{{- end -}}

{{/* The access log fields of every rendered Envoy (authz.render.envoy.ACCESS_LOG_FORMAT), for one server. */}}
{{- define "mcp-authz.accessLogLabels" -}}
start_time: '%START_TIME%'
mcp_server: {{ . | quote }}
method: '%REQ(:METHOD)%'
path: '%PATH(NQ)%'
protocol: '%PROTOCOL%'
mcp_method: '%REQ(MCP-METHOD)%'
mcp_name: '%REQ(MCP-NAME)%'
mcp_protocol_version: '%REQ(MCP-PROTOCOL-VERSION)%'
response_code: '%RESPONSE_CODE%'
response_flags: '%RESPONSE_FLAGS%'
response_code_details: '%RESPONSE_CODE_DETAILS%'
duration_ms: '%DURATION%'
bytes_received: '%BYTES_RECEIVED%'
bytes_sent: '%BYTES_SENT%'
upstream_host: '%UPSTREAM_HOST%'
downstream_address: '%DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT%'
request_id: '%REQ(X-REQUEST-ID)%'
traceparent: '%REQ(TRACEPARENT)%'
user_agent: '%REQ(USER-AGENT)%'
{{- end -}}

{{/* An envoyExtAuthzGrpc provider (authz.render.istio.grpc_provider): fail closed, the body bound. */}}
{{- define "mcp-authz.grpcProvider" -}}
{{- $root := index . 0 -}}
{{- $envoy := include "mcp-authz.envoy" $root | fromJson -}}
service: {{ index . 1 }}
port: {{ $root.Values.ports.grpc }}
timeout: {{ include "mcp-authz.seconds" $envoy.timeout_ms }}
failOpen: false
statusOnError: "503"
includeRequestBodyInCheck:
  maxRequestBytes: {{ int $envoy.max_request_bytes }}
  allowPartialMessage: false
  packAsBytes: true
{{- end -}}

{{/*
The sidecar layout's injection template (authz.render.istio.injection_template): a Pod patch istiod merges
into pods annotated `inject.istio.io/templates: sidecar,mcp-authz`. It is itself a Go template, evaluated
by istiod for each pod: its `{{ }}` are escaped here so Helm writes them as they are.
*/}}
{{- define "mcp-authz.injectionTemplate" -}}
{{- $keys := include "mcp-authz.keyFiles" . | fromJson -}}
metadata:
  labels:
    mcp-authz.io/sidecar: 'true'
    mcp-authz.io/config: '{{ "{{" }} index .ObjectMeta.Annotations `mcp-authz.io/config` {{ "}}" }}'
spec:
  containers:
  - name: mcp-authz
    image: {{ include "mcp-authz.image" . }}
    imagePullPolicy: {{ .Values.image.pullPolicy }}
    ports:
      {{- include "mcp-authz.ports" . | nindent 6 }}
    {{- $names := include "mcp-authz.envNames" (toYaml .Values.config) | fromJsonArray }}
    {{- if $names }}
    env:
    {{- range $names }}
    - name: {{ . }}
      valueFrom:
        secretKeyRef:
          name: '{{ "{{" }} index .ObjectMeta.Annotations `mcp-authz.io/config` {{ "}}" }}'
          key: {{ . }}
          optional: true
    {{- end }}
    {{- end }}
    {{- include "mcp-authz.probes" (list . false) | nindent 4 }}
    resources:
      {{- toYaml .Values.resources | nindent 6 }}
    securityContext:
      {{- toYaml .Values.securityContext | nindent 6 }}
    volumeMounts:
    - name: mcp-authz-config
      mountPath: /etc/mcp-authz
      readOnly: true
    - name: mcp-authz-tmp
      mountPath: /tmp
    {{- if $keys }}
    - name: mcp-authz-keys
      mountPath: /var/run/secrets/mcp-authz
      readOnly: true
    {{- end }}
  volumes:
  - name: mcp-authz-config
    configMap:
      name: '{{ "{{" }} index .ObjectMeta.Annotations `mcp-authz.io/config` {{ "}}" }}'
  - name: mcp-authz-tmp
    emptyDir:
      medium: Memory
      sizeLimit: 16Mi
  {{- if $keys }}
  - name: mcp-authz-keys
    secret:
      secretName: '{{ "{{" }} index .ObjectMeta.Annotations `mcp-authz.io/config` {{ "}}" }}'
      items:
      {{- range $name, $file := $keys }}
      - key: {{ $file }}
        path: {{ $file }}
      {{- end }}
      optional: true
  {{- end }}
{{- end -}}

{{/* One MCP server's sidecar config (authz.render.istio._local_config): Check on loopback, that server only. */}}
{{- define "mcp-authz.sidecarConfig" -}}
{{- $root := index . 0 -}}
{{- $server := index . 1 -}}
{{- $config := deepCopy $root.Values.config -}}
{{- $http := ternary (printf "127.0.0.1:%d" (int $root.Values.ports.http)) "" (gt (int $root.Values.ports.http) 0) -}}
{{- $_ := set $config "listen" (dict "grpc" (printf "127.0.0.1:%d" (int $root.Values.ports.grpc)) "discovery" (printf "0.0.0.0:%d" (int $root.Values.ports.discovery)) "http" $http) -}}
{{- $keys := include "mcp-authz.keyFiles" $root | fromJson -}}
{{- range $config.issuers -}}
{{- if hasKey $keys .name -}}
{{- $_ := set . "local_key_file" (printf "/var/run/secrets/mcp-authz/%s" (get $keys .name)) -}}
{{- end -}}
{{- end -}}
{{- $servers := list -}}
{{- range $config.servers -}}
{{- if eq .name $server -}}{{- $servers = append $servers . -}}{{- end -}}
{{- end -}}
{{- $_ := set $config "servers" $servers -}}
{{- toYaml $config -}}
{{- end -}}

{{/*
What the discovery service answers (authz.render.istio.discovery_matches): [[kind, path]...] with kind
prefix or exact: RFC 9728 documents, the mirrored RFC 8414 / OIDC documents (the OIDC-appended form of a
path issuer exactly), a development issuer's JWKS.
*/}}
{{- define "mcp-authz.discoveryMatches" -}}
{{- $matches := list (list "prefix" "/.well-known/oauth-protected-resource") (list "prefix" "/.well-known/oauth-authorization-server") (list "prefix" "/.well-known/openid-configuration") -}}
{{- $seen := list -}}
{{- $local := false -}}
{{- range .Values.config.issuers -}}
{{- if .local_key_file -}}
{{- $local = true -}}
{{- else -}}
{{- $path := trimSuffix "/" (urlParse .issuer).path -}}
{{- $exact := printf "%s/.well-known/openid-configuration" $path -}}
{{- if and $path (not (has $exact $seen)) -}}
{{- $seen = append $seen $exact -}}
{{- $matches = append $matches (list "exact" $exact) -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- if $local -}}
{{- $matches = append $matches (list "prefix" "/jwks/") -}}
{{- end -}}
{{- $matches | toJson -}}
{{- end -}}

{{/* Public host -> its servers, in config order; refuses hosts Gateway API rejects (IP addresses). */}}
{{- define "mcp-authz.hosts" -}}
{{- $hosts := dict -}}
{{- $order := list -}}
{{- range $i, $server := .Values.config.servers -}}
{{- $host := (urlParse $server.resource).hostname -}}
{{- if or (regexMatch "^[0-9.]+$" $host) (contains ":" $host) -}}
{{- fail (printf "config.servers[%d].resource: host %q is an IP address; Gateway API HTTPRoute hostnames and the gateway's routing need a DNS name" $i $host) -}}
{{- end -}}
{{- if not (hasKey $hosts $host) -}}
{{- $order = append $order $host -}}
{{- $_ := set $hosts $host list -}}
{{- end -}}
{{- $_ := set $hosts $host (append (get $hosts $host) $server) -}}
{{- end -}}
{{- list $order $hosts | toJson -}}
{{- end -}}
