"""pipelines.generate.schema: the writer's Arrow schema and Hugging Face features follow the format's
column contract (`pipelines.dataset_format.COLUMNS`), and a written shard has exactly that schema."""

from __future__ import annotations

import json

from pipelines.dataset_format import COLUMNS, HF_KEY, PROVENANCE_KEY
from pipelines.generate.schema import arrow_schema, hf_features


def test_the_arrow_schema_has_the_format_columns_in_order() -> None:
    schema = arrow_schema(4, ["a", "b"], {"seed": 1})
    assert tuple(schema.names) == COLUMNS
    assert json.loads(schema.metadata[PROVENANCE_KEY]) == {"seed": 1}
    features = json.loads(schema.metadata[HF_KEY])
    assert set(features["info"]["features"]) == set(COLUMNS)  # stored with sorted keys


def test_the_hf_features_name_every_column_and_the_classes() -> None:
    features = hf_features(3, ["cat", "dog"])
    assert tuple(features) == COLUMNS
    assert features["label"]["names"] == ["cat", "dog"]
    assert features["latent"]["length"] == 3
