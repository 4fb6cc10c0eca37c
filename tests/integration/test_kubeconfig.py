"""Reading kubeconfig contexts without the client, as `--dry_run` and flag checks do."""

from __future__ import annotations

import pytest
import yaml

from caliban_flows.platforms.kubernetes import kubeconfig as kc


def write(path, contexts, current=None):
    doc = {
        "apiVersion": "v1",
        "kind": "Config",
        "contexts": [
            {"name": name, "context": {"cluster": name, **({"namespace": ns} if ns else {})}}
            for name, ns in contexts
        ],
    }
    if current:
        doc["current-context"] = current
    path.write_text(yaml.safe_dump(doc))
    return path


def resolve(context, namespace, config_file=None):
    return kc.choose(*kc.contexts(config_file), context, namespace)


def test_flags_then_the_current_context_then_default(tmp_path, monkeypatch):
    config = write(tmp_path / "a", [("dev", "research"), ("prod", None)], current="dev")
    monkeypatch.setenv("KUBECONFIG", str(config))
    assert resolve(None, None) == ("dev", "research")
    assert resolve("prod", None) == ("prod", "default")
    assert resolve("dev", "other") == ("dev", "other")


def test_kubeconfig_lists_merge_and_the_first_wins(tmp_path, monkeypatch):
    first = write(tmp_path / "a", [("dev", "one")])
    second = write(tmp_path / "b", [("dev", "two"), ("gke_p_us-central1_c1", None)], current="dev")
    monkeypatch.setenv("KUBECONFIG", f"{first}:{tmp_path / 'missing'}:{second}")
    entries, current = kc.contexts()
    assert [e["name"] for e in entries] == ["dev", "gke_p_us-central1_c1"]
    assert current == "dev" and resolve(None, None) == ("dev", "one")


def test_bad_input_is_one_line(tmp_path, monkeypatch):
    monkeypatch.setenv("KUBECONFIG", str(write(tmp_path / "a", [("dev", None)])))
    with pytest.raises(kc.KubeconfigError, match=r"no context 'nope' .*it has: dev"):
        resolve("nope", None)
    with pytest.raises(kc.KubeconfigError, match="not found"):
        resolve(None, None, config_file=str(tmp_path / "absent"))
    (tmp_path / "broken").write_text("contexts: [\n")
    with pytest.raises(kc.KubeconfigError, match="not readable"):
        kc.contexts(str(tmp_path / "broken"))


def test_no_kubeconfig_at_all_is_the_default_namespace(tmp_path, monkeypatch):
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "none"))
    assert resolve(None, None) == (None, "default")
