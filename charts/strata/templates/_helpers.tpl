{{- define "strata.name" -}}strata-operator{{- end -}}

{{- define "strata.fullname" -}}
{{- if contains "strata" .Release.Name -}}
{{- printf "%s-operator" .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-strata-operator" .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "strata.labels" -}}
app.kubernetes.io/name: {{ include "strata.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{- define "strata.selectorLabels" -}}
app.kubernetes.io/name: {{ include "strata.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "strata.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "strata.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{/* What the operator needs in every namespace it watches: nothing more. */}}
{{- define "strata.namespacedRules" -}}
# Its own resources: watch them, keep kopf's progress annotations, write status.
- apiGroups: [strata.dev]
  resources: [agentdeployments, cachepolicies, routingpolicies]
  verbs: [get, list, watch, patch]
- apiGroups: [strata.dev]
  resources: [agentdeployments/status, cachepolicies/status, routingpolicies/status]
  verbs: [get, patch]
# Children, written by server-side apply (create + patch); garbage collection deletes them.
- apiGroups: [""]
  resources: [configmaps, services]
  verbs: [get, list, watch, create, patch]
- apiGroups: [apps]
  resources: [deployments]
  verbs: [get, list, watch, create, patch]
- apiGroups: [policy]
  resources: [poddisruptionbudgets]
  verbs: [get, list, watch, create, patch]
# Children that can be switched off (KEDA <-> HPA, networkPolicy.enabled) are also deleted.
- apiGroups: [autoscaling]
  resources: [horizontalpodautoscalers]
  verbs: [get, list, watch, create, patch, delete]
- apiGroups: [keda.sh]
  resources: [scaledobjects]
  verbs: [get, list, watch, create, patch, delete]
- apiGroups: [networking.k8s.io]
  resources: [networkpolicies]
  verbs: [get, list, watch, create, patch, delete]
# Runtime pods: read only, for the agent definitions hash each one reports in an annotation.
- apiGroups: [""]
  resources: [pods]
  verbs: [list, watch]
# Each AgentDeployment's runtime pods get a ServiceAccount of their own and a Role reading exactly
# their ConfigMap (get/list/watch by resourceNames): no escalation needed, the operator holds that
# read itself. roles/rolebindings only as far as RBAC's escalation check lets it: it can grant
# nothing it does not hold, apart from the one ClusterRole below.
- apiGroups: [""]
  resources: [serviceaccounts]
  verbs: [get, create, patch]
- apiGroups: [rbac.authorization.k8s.io]
  resources: [roles]
  verbs: [get, create, patch]
- apiGroups: [rbac.authorization.k8s.io]
  resources: [rolebindings]
  verbs: [get, create, patch, delete]
# spec.reportAgentsHash: bind (only) the runtime-pod-annotator ClusterRole (patch pods), which the
# operator does not hold: `bind` on that one name instead of `patch pods` or `escalate`.
- apiGroups: [rbac.authorization.k8s.io]
  resources: [clusterroles]
  resourceNames: [{{ include "strata.fullname" . }}-runtime-pod-annotator]
  verbs: [bind]
# No Secrets here: they are granted one namespace (and name) at a time, see secretAccess.
- apiGroups: ["", events.k8s.io]
  resources: [events]
  verbs: [create, patch]
{{- if .Values.peering.enabled }}
- apiGroups: [kopf.dev]
  resources: [kopfpeerings]
  verbs: [get, list, watch, patch]
{{- end }}
{{- end -}}

{{- define "strata.peeringHook" -}}
helm.sh/hook: post-install,post-upgrade
helm.sh/hook-delete-policy: before-hook-creation
{{- end -}}
