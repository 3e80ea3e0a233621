"""The base every config shape derives from: camelCase on the wire, strict on unknown keys.

Strict (``extra="forbid"``) so that a typo in a YAML file or custom resource is a
clear error naming the field instead of a silently ignored setting.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field
from pydantic.alias_generators import to_camel


class ConfigModel(BaseModel):
    model_config = ConfigDict(
        alias_generator=to_camel,
        populate_by_name=True,
        extra="forbid",
        frozen=True,
        validate_default=True,
    )


class SecretKeyRef(ConfigModel):
    """A key inside a Kubernetes Secret; the only way a CRD may point at a secret value."""

    name: str = Field(description="Name of the Secret, in the same namespace.")
    key: str = Field(description="Key inside the Secret.")
