"""One-line errors for a network's init arguments that jsonargparse could not take.

``AdvMIMModule`` takes a network as an ``nn.Module`` or a ``{"class_path": ...}`` mapping.
When an init argument has the wrong type, jsonargparse rejects the ``nn.Module`` branch and
keeps the words as a plain mapping, which would fail later with a traceback about a linked
key; :func:`refuse_a_network_that_failed_to_parse` names the argument, the value and the
expected type instead.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

__all__ = ["refuse_a_network_that_failed_to_parse"]


def refuse_a_network_that_failed_to_parse(
    network: str, config: Any, words: list[Any], default_class: str
) -> None:
    """Refuse ``model.<network>`` when its class_path spec did not validate, naming the argument.

    The module takes a network as an ``nn.Module`` or a ``{"class_path": ...}`` mapping (as
    checkpoints store it). When an init argument has the wrong type
    (``--model.cnn.init_args.dropout 0.9``), jsonargparse rejects the ``nn.Module`` spec and
    keeps the words as a plain mapping, which then fails at instantiation with a traceback
    about a linked key. Each stated init argument is checked against the class's signature
    here instead.

    Raises:
        ValueError: Naming the setting, the value given and the type the class expects.
    """
    value = (config.get("model") or {}).get(network)
    if not isinstance(value, dict):
        return  # None, or a spec jsonargparse accepted (a Namespace with class_path)
    from jsonargparse import ArgumentParser

    from advmim_lightning.run.resume import _class_named

    specs = stated_network_specs(network, [str(w) for w in words])
    class_path = value.get("class_path") or next(
        (c for c, _ in reversed(specs) if c), default_class
    )
    cls = _class_named(str(class_path))
    stated = [(k, v, False) for k, v in (value.get("init_args") or {}).items()]
    stated += [(k, v, False) for k, v in value.items() if k not in ("class_path", "init_args")]
    for _, init_args in specs:
        stated += [(k, v, isinstance(v, str)) for k, v in init_args.items()]
    where = f"model.{network}.init_args"
    if cls is None:
        raise ValueError(f"model.{network}.class_path {class_path!r} names no class")
    import inspect

    parameters = inspect.signature(cls).parameters
    for key, given, from_words in stated:
        if key not in parameters:
            raise ValueError(
                f"{where}.{key}: {class_path} has no argument {key!r} (its arguments: "
                f"{', '.join(parameters)})"
            )
        parser = ArgumentParser(exit_on_error=False)
        parser.add_class_arguments(cls, "net", fail_untyped=False, sub_configs=True)
        try:
            if from_words:
                parser.parse_args([f"--net.{key}", given])
            else:
                parser.parse_object({"net": {key: given}})
        except Exception:  # jsonargparse's ArgumentError, or its wrapped TypeError
            annotation = parameters[key].annotation
            expected = annotation if isinstance(annotation, str) else type_name(annotation)
            raise ValueError(
                f"{where}.{key} {given}: expected {expected} (the {key} argument of "
                f"{class_path}), got {given!r}"
            ) from None
    raise ValueError(
        f"model.{network} is not a network spec {class_path} accepts: {value!r}; give "
        f"class_path and init_args (see `advmim fit --model.{network}.help {class_path}`)"
    )


def type_name(annotation: Any) -> str:
    return getattr(annotation, "__name__", None) or str(annotation).replace("typing.", "")


def stated_network_specs(network: str, words: list[str]) -> list[tuple[str | None, dict]]:
    """``(class_path, init_args)`` stated for ``model.<network>``, in the order given: the
    ``model:`` sections of ``-c`` files (YAML values) and ``--model.<network>...`` words
    (strings)."""
    import yaml

    specs: list[tuple[str | None, dict]] = []
    prefix = f"--model.{network}."
    for index, word in enumerate(words):
        following = words[index + 1] if index + 1 < len(words) else ""
        key, _, inline = word.partition("=")
        given = inline if "=" in word else following
        if key in ("-c", "--config") or word.startswith("--config="):
            try:
                tree = yaml.safe_load(Path(given).read_text()) or {}
            except (OSError, ValueError, yaml.YAMLError):
                continue
            sections = [tree, *(tree.get(k) for k in ("fit", "validate", "test", "predict"))]
            for section in sections:
                model = section.get("model") if isinstance(section, dict) else None
                spec = model.get(network) if isinstance(model, dict) else None
                if isinstance(spec, dict):
                    init_args = spec.get("init_args")
                    specs.append((spec.get("class_path"), dict(init_args or {})))
        elif key == f"{prefix}class_path" or key == f"--model.{network}":
            specs.append((given, {}))
        elif key.startswith(f"{prefix}init_args."):
            specs.append((None, {key[len(f"{prefix}init_args.") :]: given}))
    return specs
