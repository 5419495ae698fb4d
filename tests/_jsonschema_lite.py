"""A small JSON Schema validator: the keywords docs/report.schema.json uses, and no others.

A keyword it does not know is an error, so the schema cannot silently say more than is checked.
"""

from __future__ import annotations

from typing import Any

_TYPES: dict[str, tuple[type, ...]] = {
    "object": (dict,),
    "array": (list,),
    "string": (str,),
    "integer": (int,),
    "number": (int, float),
    "boolean": (bool,),
    "null": (type(None),),
}
_ANNOTATIONS = {"$schema", "$id", "title", "description", "$defs"}


def errors(
    instance: Any, schema: dict[str, Any], root: dict[str, Any] | None = None, path: str = "$"
) -> list[str]:
    """Every way `instance` breaks `schema`, each as "path: what"."""
    root = root if root is not None else schema
    found: list[str] = []
    for keyword, value in schema.items():
        if keyword in _ANNOTATIONS:
            continue
        if keyword == "$ref":
            if not value.startswith("#/"):
                raise ValueError(f"only local references are supported: {value}")
            target: Any = root
            for part in value[2:].split("/"):
                target = target[part]
            found += errors(instance, target, root, path)
        elif keyword == "type":
            kinds = value if isinstance(value, list) else [value]
            ok = any(
                isinstance(instance, _TYPES[k])
                and not (k in ("integer", "number") and isinstance(instance, bool))
                for k in kinds
            )
            if not ok:
                found.append(f"{path}: {type(instance).__name__} is not {value}")
        elif keyword == "enum":
            if instance not in value:
                found.append(f"{path}: {instance!r} is not one of {value}")
        elif keyword == "const":
            if instance != value:
                found.append(f"{path}: {instance!r} is not {value!r}")
        elif keyword == "minimum":
            if isinstance(instance, int | float) and instance < value:
                found.append(f"{path}: {instance} < {value}")
        elif keyword == "required":
            if isinstance(instance, dict):
                found += [f"{path}: missing '{key}'" for key in value if key not in instance]
        elif keyword == "properties":
            if isinstance(instance, dict):
                for key, sub in value.items():
                    if key in instance:
                        found += errors(instance[key], sub, root, f"{path}.{key}")
        elif keyword == "additionalProperties":
            if isinstance(instance, dict):
                extra = [k for k in instance if k not in schema.get("properties", {})]
                for key in extra:
                    if value is False:
                        found.append(f"{path}: unexpected '{key}'")
                    elif isinstance(value, dict):
                        found += errors(instance[key], value, root, f"{path}.{key}")
        elif keyword == "items":
            if isinstance(instance, list):
                for i, item in enumerate(instance):
                    found += errors(item, value, root, f"{path}[{i}]")
        elif keyword in ("anyOf", "oneOf"):
            matches = [not errors(instance, sub, root, path) for sub in value]
            if keyword == "anyOf" and not any(matches):
                found.append(f"{path}: matches none of anyOf")
            if keyword == "oneOf" and sum(matches) != 1:
                found.append(f"{path}: matches {sum(matches)} of oneOf, not exactly one")
        elif keyword == "dependentRequired":
            if isinstance(instance, dict):
                for key, needed in value.items():
                    if key in instance:
                        found += [f"{path}: '{key}' needs '{n}'" for n in needed if n not in instance]
        else:
            raise ValueError(f"the validator does not know the keyword '{keyword}' (at {path})")
    return found
