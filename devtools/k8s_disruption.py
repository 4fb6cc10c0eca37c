"""Pod failure policies and pod disruptions for devtools.k8s_emulator, as Kubernetes has them.

Three pure pieces the emulator calls:

- `policy_errors(spec)`: the apiserver's checks of a Job's `spec.podFailurePolicy`
  (pkg/apis/batch/validation, Kubernetes 1.33), as (field, cause reason, detail) triples;
- `match(policy, pod)`: the Job controller's matchPodFailurePolicy
  (pkg/controller/job/pod_failure_policy.go): the first rule a failed pod matches decides;
- `DISRUPTIONS` / `disruption_condition(reason)`: the DisruptionTarget condition that the
  scheduler, the Eviction API, the taint manager, PodGC or the kubelet put on a pod they take
  away, with their own reasons and messages.
"""

from __future__ import annotations

import itertools
import time
from typing import Any

DISRUPTION_TARGET = "DisruptionTarget"
ACTIONS = ("Count", "FailIndex", "FailJob", "Ignore")
OPERATORS = ("In", "NotIn")
CONDITION_STATUSES = ("False", "True", "Unknown")
MAX_RULES = 20
MAX_VALUES = 255
MAX_PATTERNS = 20
POLICY_RESTART_MESSAGE = 'only "Never" is supported when podFailurePolicy is specified'

# The reason each component writes, and its message (the scheduler's names the preemptor's
# scheduler: the default one here).
DISRUPTIONS = {
    "PreemptionByScheduler": "default-scheduler: preempting to accommodate a higher priority pod",
    "EvictionByEvictionAPI": "Eviction API: evicting",
    "DeletionByTaintManager": "Taint manager: deleting due to NoExecute taint",
    "DeletionByPodGC": "PodGC: node no longer exists",
    "TerminationByKubelet": "Pod was terminated in response to imminent node shutdown.",
}
# What the kubelet also writes on the pod's status when it is the one ending it (a graceful
# node shutdown: what a GKE Spot VM's preemption looks like).
POD_STATUS = {
    "TerminationByKubelet": {
        "reason": "Terminated",
        "message": "Pod was terminated in response to imminent node shutdown.",
    }
}
# After the kill: the runtime's word on a SIGKILLed container, as the kubelet reports it.
KILLED_EXIT_CODE = 137
KILLED_REASON = "Error"

Cause = tuple[str, str, str]  # field, FieldValue* reason, detail (the message after the field)


def disruption_condition(reason: str) -> dict:
    if reason not in DISRUPTIONS:
        raise ValueError(f"disruption reason must be one of {sorted(DISRUPTIONS)}, not {reason!r}")
    return {
        "type": DISRUPTION_TARGET,
        "status": "True",
        "lastProbeTime": None,
        "lastTransitionTime": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "reason": reason,
        "message": DISRUPTIONS[reason],
    }


# --------------------------------------------------------------------------- defaults


def defaulted(policy: Any) -> Any:
    """The apiserver's defaulting: an onPodConditions pattern without a status means "True"."""
    if not isinstance(policy, dict) or not isinstance(policy.get("rules"), list):
        return policy
    rules = []
    for rule in policy["rules"]:
        patterns = rule.get("onPodConditions") if isinstance(rule, dict) else None
        if isinstance(patterns, list):
            patterns = [
                {**p, "status": p.get("status") or "True"} if isinstance(p, dict) else p
                for p in patterns
            ]
            rule = {**rule, "onPodConditions": patterns}
        rules.append(rule)
    return {**policy, "rules": rules}


# --------------------------------------------------------------------------- validation


def _go(value: Any) -> str:
    """How Go's field errors print a bad value."""
    if isinstance(value, str):
        return f'"{value}"'
    if isinstance(value, list):
        return "[]int32{" + ", ".join(str(v) for v in value) + "}"
    return str(value)


def _invalid(path: str, value: Any, why: str) -> Cause:
    return path, "FieldValueInvalid", f"Invalid value: {_go(value)}: {why}"


def _omitted(path: str, why: str) -> Cause:
    return path, "FieldValueInvalid", f"Invalid value: {why}"


def _unsupported(path: str, value: Any, supported: tuple[str, ...]) -> Cause:
    listed = ", ".join(f'"{s}"' for s in supported)
    return (
        path,
        "FieldValueNotSupported",
        f"Unsupported value: {_go(value)}: supported values: {listed}",
    )


def _required(path: str, supported: tuple[str, ...]) -> Cause:
    listed = " ".join(f'"{s}"' for s in supported)
    return path, "FieldValueRequired", f"Required value: valid values: [{listed}]"


def _too_many(path: str, count: int, most: int) -> Cause:
    return path, "FieldValueTooMany", f"Too many: {count}: must have at most {most} items"


def policy_errors(spec: dict, qualified_name_errors) -> list[Cause]:
    """Why a Job spec's podFailurePolicy is refused; [] when it is fine or absent.
    `qualified_name_errors(text)`: the reasons a condition type is no qualified name."""
    policy = defaulted(spec.get("podFailurePolicy"))
    if policy is None:
        return []
    path = "spec.podFailurePolicy"
    pod = (spec.get("template") or {}).get("spec") or {}
    errors: list[Cause] = []
    if pod.get("restartPolicy") == "OnFailure":  # the other values fail on their own
        errors.append(
            _invalid("spec.template.spec.restartPolicy", "OnFailure", POLICY_RESTART_MESSAGE)
        )
    replacement = spec.get("podReplacementPolicy")
    if replacement is not None and replacement != "Failed":
        errors.append(_unsupported("spec.podReplacementPolicy", replacement, ("Failed",)))
    if not isinstance(policy, dict):  # the real one cannot even decode these two
        return [*errors, _invalid(path, str(policy), "must be an object")]
    rules = policy.get("rules") or []
    if not isinstance(rules, list):
        return [*errors, _invalid(f"{path}.rules", str(rules), "must be a list of rules")]
    if len(rules) > MAX_RULES:
        errors.append(_too_many(f"{path}.rules", len(rules), MAX_RULES))
    names = {
        c.get("name")
        for key in ("containers", "initContainers")
        for c in pod.get(key) or []
        if isinstance(c, dict)
    }
    for i, rule in enumerate(rules):
        rule = rule if isinstance(rule, dict) else {}
        errors += _rule_errors(rule, f"{path}.rules[{i}]", spec, names, qualified_name_errors)
    return errors


def _rule_errors(rule: dict, path: str, spec: dict, names: set, qualified) -> list[Cause]:
    errors: list[Cause] = []
    action = rule.get("action")
    if not action:
        errors.append(_required(f"{path}.action", ACTIONS))
    elif action == "FailIndex":
        if spec.get("backoffLimitPerIndex") is None:
            why = "requires the backoffLimitPerIndex to be set"
            errors.append(_invalid(f"{path}.action", action, why))
    elif action not in ACTIONS:
        errors.append(_unsupported(f"{path}.action", action, ACTIONS))
    on_codes = rule.get("onExitCodes")
    patterns = rule.get("onPodConditions") or []
    if on_codes is not None:
        errors += _exit_code_errors(on_codes, f"{path}.onExitCodes", names)
    if patterns:
        errors += _pattern_errors(patterns, f"{path}.onPodConditions", qualified)
    if on_codes is not None and patterns:
        errors.append(
            _omitted(path, "specifying both OnExitCodes and OnPodConditions is not supported")
        )
    if on_codes is None and not patterns:
        errors.append(
            _omitted(path, "specifying one of OnExitCodes and OnPodConditions is required")
        )
    return errors


def _exit_code_errors(requirement: Any, path: str, names: set) -> list[Cause]:
    requirement = requirement if isinstance(requirement, dict) else {}
    errors: list[Cause] = []
    operator = requirement.get("operator")
    if not operator:
        errors.append(_required(f"{path}.operator", OPERATORS))
    elif operator not in OPERATORS:
        errors.append(_unsupported(f"{path}.operator", operator, OPERATORS))
    container = requirement.get("containerName")
    if container is not None and container not in names:
        why = "must be one of the container or initContainer names in the pod template"
        errors.append(_invalid(f"{path}.containerName", container, why))
    values = requirement.get("values") or []
    if not values:
        errors.append(_invalid(f"{path}.values", [], "at least one value is required"))
    elif len(values) > MAX_VALUES:
        errors.append(_too_many(f"{path}.values", len(values), MAX_VALUES))
    seen: set[int] = set()
    for j, value in enumerate(values):
        if operator == "In" and value == 0:
            errors.append(_invalid(f"{path}.values[{j}]", 0, "must not be 0 for the In operator"))
        if value in seen:
            errors.append(
                (f"{path}.values[{j}]", "FieldValueDuplicate", f"Duplicate value: {value}")
            )
        seen.add(value)
    if any(a > b for a, b in itertools.pairwise(values)):
        errors.append(_invalid(f"{path}.values", values, "must be ordered"))
    return errors


def _pattern_errors(patterns: Any, path: str, qualified) -> list[Cause]:
    if not isinstance(patterns, list):
        return [_invalid(path, str(patterns), "must be a list")]
    errors: list[Cause] = []
    if len(patterns) > MAX_PATTERNS:
        errors.append(_too_many(path, len(patterns), MAX_PATTERNS))
    for j, pattern in enumerate(patterns):
        pattern = pattern if isinstance(pattern, dict) else {}
        kind = pattern.get("type") or ""
        if not kind:
            errors.append((f"{path}[{j}].type", "FieldValueRequired", "Required value"))
        else:
            errors += [_invalid(f"{path}[{j}].type", kind, why) for why in qualified(kind)]
        status = pattern.get("status")
        if status not in CONDITION_STATUSES:
            errors.append(_unsupported(f"{path}[{j}].status", status, CONDITION_STATUSES))
    return errors


# --------------------------------------------------------------------------- the controller


def match(policy: dict | None, pod: dict) -> tuple[str | None, str]:
    """The action of the first rule a failed pod matches (None: no rule, counted as ever), and
    for FailJob the message the Job's Failed condition carries."""
    if not policy:
        return None, ""
    meta, status = pod.get("metadata") or {}, pod.get("status") or {}
    where = f"{meta.get('namespace')}/{meta.get('name')}"
    for index, rule in enumerate(policy.get("rules") or []):
        action = rule.get("action")
        if rule.get("onExitCodes") is not None:
            found = _matching_container(status, rule["onExitCodes"])
            if found is not None:
                code = found["state"]["terminated"]["exitCode"]
                message = (
                    f"Container {found['name']} for pod {where} failed with exit code {code} "
                    f"matching {action} rule at index {index}"
                )
                return action, message
        elif rule.get("onPodConditions"):
            condition = _matching_condition(status, rule["onPodConditions"])
            if condition is not None:
                message = (
                    f"Pod {where} has condition {condition['type']} matching {action} rule at "
                    f"index {index}"
                )
                return action, message
    return None, ""


def _matching_container(status: dict, requirement: dict) -> dict | None:
    wanted, operator = requirement.get("containerName"), requirement.get("operator")
    values = requirement.get("values") or []
    for key in ("containerStatuses", "initContainerStatuses"):
        for container in status.get(key) or []:
            ended = (container.get("state") or {}).get("terminated")
            if ended is None or wanted not in (None, container.get("name")):
                continue
            code = ended.get("exitCode", 0)
            if code != 0 and (code in values) == (operator == "In") and operator in OPERATORS:
                return container
    return None


def _matching_condition(status: dict, patterns: list) -> dict | None:
    for condition in status.get("conditions") or []:
        for pattern in patterns:
            if (condition.get("type"), condition.get("status")) == (
                pattern.get("type"),
                pattern.get("status"),
            ):
                return condition
    return None
