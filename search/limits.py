"""The one table of a search request's limits and defaults.

Read by the request parser (``search/arguments.py``), the OpenAPI serializers
(``search/apis/search.py``: the schema states exactly these numbers), the other entry points'
adapters and the services; ``tests/search/test_limits.py`` checks the generated schema agrees.
A limit changes here and nowhere else.
"""

from __future__ import annotations

MODES = ("semantic", "keyword", "hybrid")
DEFAULT_MODE = "semantic"
ROLES = ("user", "assistant", "system")

QUERY_MAX_CHARS = 2000
MAX_RESULTS = (1, 50)  # inclusive
DEFAULT_MAX_RESULTS = 5
THRESHOLD = (0.0, 1.0)
DEFAULT_THRESHOLD = 0.0
SEMANTIC_WEIGHT = (0.0, 1.0)
CONVERSATION_MAX_TURNS = 50
TURN_MAX_CHARS = 8000
CALLER_ID_MAX_CHARS = 200  # user_id, conversation_id
CATEGORY_MAX_CHARS = 200
METADATA_MAX_BYTES = 20_000
LIST_MAX_ITEMS = {"content_types": 20, "categories": 100, "document_ids": 500}
ID_MAX = 2**63 - 1
