"""The one redaction policy: what counts as a secret, and how it is kept out of what is stored.

A secret is
- the value of a secret-looking key (`key`, `secret`, `token`, `password`, `credential`, `session`,
  `private`, `authorization`, `connection_string`: a substring of the key, any case) anywhere in a
  config tree: fsspec filesystems take credentials that way (s3fs `key`/`secret`/`token`,
  `client_kwargs.aws_secret_access_key`, gcsfs `token`, adlfs `account_key`/`sas_token`...);
- the user-info of a URL (`s3://KEY:SECRET@bucket/...`, `ftp://user:password@host/...`).

Numbers, booleans and empty values are never secrets (`session_ttl: 60`, a class named "monkey"
in `generate.per_class`), nor are gcsfs's `token` modes ("anon", "google_default", ...) or the path
of a JSON credential file.

Everything written (config.yaml, model/pipeline.yaml, the model's config.json, checkpoints) stores
`redact_config` of the config, and console lines and error messages go through `redact_text`. Flow
parameters are refused instead (`secret_parameters_error`): Prefect keeps them in its database, readable
through its API and UI, and a redacted parameter would not run. Credentials belong in the
environment or in credential files (`SECRET_FIX`).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

import yaml

from vae.config import ConfigError

REDACTED = "<redacted>"

#: Substrings of a key (lowercased) whose value is a credential.
SECRET_WORDS = (
    "key",
    "secret",
    "token",
    "password",
    "passwd",
    "credential",
    "session",
    "private",
    "authorization",
    "connection_string",
)

#: gcsfs `token` values that name a way to find credentials, not credentials themselves.
_NOT_SECRET_VALUES = frozenset({"anon", "google_default", "cache", "cloud", "browser"})

#: The fix named by every refusal of credentials where they would be stored.
SECRET_FIX = (
    "pass credentials by environment (AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, AWS_PROFILE, "
    "GOOGLE_APPLICATION_CREDENTIALS...) or a credential file (e.g. storage_options.profile), never as "
    "flow parameters"
)

# `scheme://` then the user-info up to "@": either RFC 3986 user-info (no "/", "?", "#"), or
# "user:password" whose password holds an unencoded "/" (AWS secrets may), but not "host:port/...".
_USERINFO = re.compile(
    r"(?P<scheme>\b[A-Za-z][A-Za-z0-9+.-]*://)"
    r"(?P<userinfo>[^\s/?#@'\"]*|[^\s/?#@:'\"]+:(?!\d*(?:[/?#\s'\"]|$))[^\s@'\"]*)@"
)


def is_secret_key(key: Any) -> bool:
    """Whether values under `key` are credentials (see `SECRET_WORDS`)."""
    lowered = str(key).lower()
    return any(word in lowered for word in SECRET_WORDS)


def is_secret_value(value: Any) -> bool:
    """Whether `value`, found under a secret-looking key, is a credential.

    Args:
        value: any config value.

    Returns:
        True for non-empty strings (other than `REDACTED`, gcsfs's token modes and the path of a
        JSON credential file), bytes and non-empty mappings or lists (a token structure such as a
        service-account document); False for numbers, booleans, None and empty values.
    """
    if isinstance(value, str):
        text = value.strip()
        if not text or text == REDACTED or text.lower() in _NOT_SECRET_VALUES:
            return False
        return not (text.lower().endswith(".json") and not any(c.isspace() for c in text))
    if isinstance(value, bytes | dict | list | tuple):
        return bool(value)
    return False


def redact_url(url: str) -> str:
    """`url` without any user-info (`s3://KEY:SECRET@bucket/x` -> `s3://bucket/x`); other text as is.

    Args:
        url: a URL or local path.

    Returns:
        The same text with the user-info of its leading URL removed (safe for files and logs).
    """
    match = _USERINFO.match(url)
    if match is None:
        return url
    return match.group("scheme") + url[match.end() :]


def redact_text(text: str) -> str:
    """`text` with the user-info of every URL in it removed (console lines, error messages)."""
    if "@" not in text:  # the common case: nothing to look for
        return text
    return _USERINFO.sub(lambda m: m.group("scheme"), text)


def has_credentials(text: str) -> bool:
    """Whether `text` holds a URL with a user and a password (`ftp://user:password@host/...`)."""
    for match in _USERINFO.finditer(text):
        _, colon, password = match.group("userinfo").partition(":")
        if colon and password:
            return True
    return False


def redact_config(tree: Any) -> Any:
    """A copy of `tree` safe to store: secret values replaced by `REDACTED`, URL user-info removed.

    Args:
        tree: a config tree (`PipelineConfig.to_dict()`, storage options, any nested dicts/lists).

    Returns:
        The same structure; values under secret-looking keys that are secrets (`is_secret_value`:
        whole mappings included, e.g. a storage option's token document) become `REDACTED`, and every
        string loses the user-info of the URLs in it.
    """
    if isinstance(tree, dict):
        return {
            k: REDACTED if is_secret_key(k) and is_secret_value(v) else redact_config(v)
            for k, v in tree.items()
        }
    if isinstance(tree, list | tuple):
        return type(tree)(redact_config(v) for v in tree)
    if isinstance(tree, str):
        return redact_text(tree)
    return tree


def publishable_config(tree: Any) -> Any:
    """`redact_config` of a config for what is published with a dataset (its manifest): every
    non-empty `storage_options` becomes `REDACTED` as a whole. Endpoints, profiles and regions are no
    credentials, but they name private infrastructure that a shared dataset need not carry."""
    if isinstance(tree, dict):
        return {
            k: REDACTED if k == "storage_options" and v else publishable_config(v) for k, v in tree.items()
        }
    return redact_config(tree)


def find_secrets(tree: Any, path: str = "") -> list[str]:
    """Dotted paths of the secrets in `tree` (never the values).

    Args:
        tree: a config tree, as for `redact_config`.
        path: the dotted path of `tree` itself (prefix of the paths returned).

    Returns:
        E.g. ["data.storage_options.secret", "generate.output"]: values under secret-looking keys
        that are secrets, and strings holding a URL with user:password; [] when there are none.
    """
    found: list[str] = []
    if isinstance(tree, dict):
        for key, value in tree.items():
            where = f"{path}.{key}" if path else str(key)
            if is_secret_key(key) and is_secret_value(value):
                found.append(where)
            else:
                found.extend(find_secrets(value, where))
    elif isinstance(tree, list | tuple):
        for i, value in enumerate(tree):
            found.extend(find_secrets(value, f"{path}[{i}]"))
    elif isinstance(tree, str) and has_credentials(tree):
        found.append(path or "<value>")
    return found


def _override_tree(item: str) -> dict[str, Any]:
    """A dotted "a.b=value" override as the nested dict it sets (values read as YAML, like the config)."""
    key, _, raw = str(item).partition("=")
    try:
        value: Any = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError:  # load_config reports it; here the raw text is what may hold a secret
        value = raw
    tree: Any = value
    for part in reversed(key.strip().split(".")):
        tree = {part: tree}
    return tree


def override_secrets(overrides: Iterable[str] | None) -> list[str]:
    """Dotted keys of the "key=value" overrides whose values hold secrets (see `find_secrets`)."""
    found: list[str] = []
    for item in overrides or []:
        found.extend(find_secrets(_override_tree(item)))
    return found


def redact_overrides(overrides: Iterable[str] | None) -> list[str] | None:
    """`overrides` safe to store: an override holding a secret becomes "key=<redacted>"."""
    if overrides is None:
        return None
    safe = []
    for item in overrides:
        if find_secrets(_override_tree(item)):
            safe.append(f"{str(item).partition('=')[0].strip()}={REDACTED}")
        else:
            safe.append(redact_text(str(item)))
    return safe


def secret_parameters_error(
    settings: Any = None, overrides: Iterable[str] | None = None, where: str = "flow parameters"
) -> ConfigError | None:
    """The refusal of flow parameters that hold credentials, or None when they hold none.

    Args:
        settings: the flow's config parameters ({"data": {...}, "train": {...}, "output_dir": ...}).
        overrides: its dotted "key=value" overrides.
        where: what the user gave them as, for the message ("flow parameters", "overrides").

    Returns:
        A one-line `ConfigError` naming the keys (never the values) and `SECRET_FIX`, or None.
    """
    found = find_secrets(settings) if settings else []
    found += override_secrets(overrides)
    if not found:
        return None
    return ConfigError(f"{where} hold credentials ({', '.join(found)}): {SECRET_FIX}")


def refuse_secret_parameters(
    settings: Any = None, overrides: Iterable[str] | None = None, where: str = "flow parameters"
) -> None:
    """Raise `secret_parameters_error(...)` when `settings`/`overrides` hold credentials.

    Raises:
        ConfigError: one line naming the keys that hold credentials and how to pass them instead.
    """
    error = secret_parameters_error(settings, overrides, where)
    if error is not None:
        raise error


__all__ = [
    "REDACTED",
    "SECRET_FIX",
    "SECRET_WORDS",
    "find_secrets",
    "has_credentials",
    "is_secret_key",
    "is_secret_value",
    "override_secrets",
    "publishable_config",
    "redact_config",
    "redact_overrides",
    "redact_text",
    "redact_url",
    "refuse_secret_parameters",
    "secret_parameters_error",
]
