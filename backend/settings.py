"""All settings, read once from the environment and passed down explicitly.

Nothing else in the code reads the environment: `Settings()` is built in the CLI (or by a test) and
handed to `create_app`, the model and the LLM client.
"""

from __future__ import annotations

from enum import Enum
from pathlib import Path

from pydantic import AliasChoices, Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict


class ResponseFormat(str, Enum):
    """How structured output is requested from the provider.

    - json_schema: OpenAI's `{"type": "json_schema", "json_schema": {...}}` (OpenAI, Azure, vLLM, Ollama).
    - json_object_schema: llama.cpp-python's `{"type": "json_object", "schema": {...}}`, grammar-constrained.
    - json_object: `{"type": "json_object"}` only; the schema is described in the prompt.
    - text: no response_format at all; the tolerant parser digs the JSON out of the answer.
    """

    json_schema = "json_schema"
    json_object_schema = "json_object_schema"
    json_object = "json_object"
    text = "text"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_file=None, extra="ignore", populate_by_name=True)

    # --- LLM provider -------------------------------------------------------------------------
    llm_base_url: str | None = Field(default=None, validation_alias="LLM_BASE_URL")
    llm_api_key: SecretStr | None = Field(
        default=None, validation_alias=AliasChoices("LLM_API_KEY", "OPENAI_API_KEY")
    )
    llm_model: str = Field(default="gpt-4o-mini", validation_alias="LLM_MODEL")
    llm_max_concurrency: int = Field(default=8, ge=1, le=512, validation_alias="LLM_MAX_CONCURRENCY")
    llm_timeout: float = Field(default=30.0, gt=0, validation_alias="LLM_TIMEOUT")
    llm_max_retries: int = Field(default=3, ge=0, le=20, validation_alias="LLM_MAX_RETRIES")
    llm_rate_limit_retries: int = Field(
        default=10,
        ge=0,
        le=100,
        validation_alias="LLM_RATE_LIMIT_RETRIES",
        description="429s one call may meet before it fails (each also lowers the concurrency limit)",
    )
    llm_temperature: float = Field(default=0.0, ge=0, le=2, validation_alias="LLM_TEMPERATURE")
    llm_max_tokens: int = Field(default=1024, ge=16, validation_alias="LLM_MAX_TOKENS")
    llm_response_format: ResponseFormat = Field(
        default=ResponseFormat.json_schema, validation_alias="LLM_RESPONSE_FORMAT"
    )
    llm_logprobs: bool = Field(default=True, validation_alias="LLM_LOGPROBS")
    llm_cache: bool = Field(default=True, validation_alias="LLM_CACHE")
    llm_cache_max_entries: int = Field(default=100_000, ge=1, validation_alias="LLM_CACHE_MAX_ENTRIES")
    llm_top_logprobs: int = Field(default=10, ge=0, le=20, validation_alias="LLM_TOP_LOGPROBS")
    llm_tasks_per_call: int = Field(
        default=1,
        ge=1,
        le=50,
        validation_alias="LLM_TASKS_PER_CALL",
        description="classification tasks answered by one LLM call (configs of <Choices> only; no scores)",
    )
    llm_prices: str | None = Field(
        default=None,
        validation_alias="LLM_PRICES",
        description='JSON {"model": [input, output]} in USD per million tokens, or a path to such a file; '
        "merged over the built-in table (backend/llm/pricing.py)",
    )

    # --- embedded local model (used when LLM_BASE_URL is not set) -----------------------------
    local_model_path: Path | None = Field(default=None, validation_alias="LOCAL_MODEL_PATH")
    local_model_name: str = Field(default="smollm2-135m-instruct", validation_alias="LOCAL_MODEL_NAME")
    local_n_ctx: int = Field(default=4096, ge=512, validation_alias="LOCAL_N_CTX")
    local_n_threads: int = Field(default=2, ge=1, validation_alias="LOCAL_N_THREADS")
    local_n_batch: int = Field(default=512, ge=8, validation_alias="LOCAL_N_BATCH")
    local_port: int = Field(default=0, ge=0, le=65535, validation_alias="LOCAL_PORT")
    local_start_timeout: float = Field(default=60.0, gt=0, validation_alias="LOCAL_START_TIMEOUT")
    local_crash_loop_deaths: int = Field(
        default=3,
        ge=1,
        validation_alias="LOCAL_CRASH_LOOP_DEATHS",
        description="deaths of the embedded server within LOCAL_CRASH_LOOP_SECONDS that make a crash loop "
        "(/health then answers 503 with the reason)",
    )
    local_crash_loop_seconds: float = Field(default=60.0, gt=0, validation_alias="LOCAL_CRASH_LOOP_SECONDS")
    local_restart_backoff_max: float = Field(
        default=120.0,
        gt=0,
        validation_alias="LOCAL_RESTART_BACKOFF_MAX",
        description="in a crash loop, restarts wait 2, 4, 8... seconds, at most this long",
    )
    local_status_file: Path | None = Field(
        default=None,
        validation_alias="LOCAL_STATUS_FILE",
        description="set by the CLI: where the embedded server's supervisor writes its state for /health",
    )

    # --- the HTTP service ------------------------------------------------------------------------
    host: str = Field(default="0.0.0.0", validation_alias="HOST")
    port: int = Field(default=9090, validation_alias="PORT")
    workers: int = Field(default=2, ge=1, validation_alias="WORKERS")
    threads: int = Field(default=8, ge=1, validation_alias="THREADS")
    basic_auth_user: str | None = Field(default=None, validation_alias="BASIC_AUTH_USER")
    basic_auth_pass: SecretStr | None = Field(default=None, validation_alias="BASIC_AUTH_PASS")
    log_level: str = Field(default="INFO", validation_alias="LOG_LEVEL")
    max_body_mb: float = Field(default=64.0, gt=0, validation_alias="MAX_BODY_MB")
    # --- request limits and webhook authentication (issue 14) ---
    max_webhook_mb: float = Field(
        default=4.0,
        gt=0,
        validation_alias="MAX_WEBHOOK_MB",
        description="a /webhook body above this many MB gets 413 (a real annotation event is a few KB)",
    )
    max_predict_tasks: int = Field(
        default=20_000,
        ge=1,
        validation_alias="MAX_PREDICT_TASKS",
        description="a /predict with more tasks gets 413 (Label Studio sends a whole project in one request)",
    )
    max_json_depth: int = Field(
        default=64,
        ge=8,
        le=500,
        validation_alias="MAX_JSON_DEPTH",
        description="JSON bodies nested deeper than this get 400 (Label Studio's payloads are < 10 deep)",
    )
    webhook_secret: SecretStr | None = Field(
        default=None,
        validation_alias="WEBHOOK_SECRET",
        description="when set, every /webhook event must carry it in the X-Lsllm-Webhook-Secret header "
        "(for webhooks configured by hand); otherwise per-project secrets are installed through the API",
    )
    secret_key: SecretStr | None = Field(
        default=None,
        validation_alias="SECRET_KEY",
        description="key for Label Studio tokens at rest and per-project webhook secrets (unset: a key "
        "generated once in DATA_DIR/secret.key, mode 0600; replicas sharing a database must share it)",
    )
    predict_deadline: float = Field(
        default=80.0,
        gt=0,
        validation_alias="PREDICT_DEADLINE",
        description="Seconds a /predict may take before unfinished tasks answer [] (LS gives up at 100 s).",
    )

    push_threshold: int = Field(
        default=50,
        ge=0,
        validation_alias="PUSH_THRESHOLD",
        description="/predict calls with more tasks are answered at once and pushed (0: never push)",
    )
    push_batch_size: int = Field(default=50, ge=1, le=1000, validation_alias="PUSH_BATCH_SIZE")

    # --- active learning (issue 13): the review tab, refreshed predictions, jobs ------------------
    review_tab: str = Field(
        default="on", pattern="^(on|off)$", validation_alias="REVIEW_TAB",
        description="on: after /setup with usable credentials, create the Data Manager tab 'Review: least "
        "confident first' (tasks without annotations, lowest prediction score first) once per project",
    )
    refresh: str = Field(
        default="on", pattern="^(on|off)$", validation_alias="REFRESH",
        description="on: when a project's example set (and student) moves to a new version, re-predict its "
        "un-annotated tasks, least confident first, and push them with the new model_version",
    )
    refresh_max_tasks: int = Field(
        default=1000, ge=0, validation_alias="REFRESH_MAX_TASKS",
        description="tasks a refresh predicts per project and model_version (the least confident first)",
    )
    refresh_max_cost_usd: float = Field(
        default=1.0, ge=0, validation_alias="REFRESH_MAX_COST_USD",
        description="USD all refreshes may spend per UTC day (LLM_PRICES; cached and student answers cost 0)",
    )
    refresh_unpriced: str = Field(
        default="deny", pattern="^(allow|deny)$", validation_alias="REFRESH_UNPRICED",
        description="allow: refresh also with a model whose price is unknown (its cost counts as 0)",
    )
    refresh_debounce_seconds: float = Field(
        default=30.0, ge=0, validation_alias="REFRESH_DEBOUNCE_SECONDS",
        description="a project's model_version must stay the same this long before its refresh starts (a "
        "burst of reviews: one refresh)",
    )
    refresh_min_interval_seconds: float = Field(
        default=300.0, ge=0, validation_alias="REFRESH_MIN_INTERVAL_SECONDS",
        description="at least this long between the starts of two refreshes of one project",
    )
    refresh_poll_seconds: float = Field(
        default=5.0, gt=0, validation_alias="REFRESH_POLL_SECONDS",
        description="how often each worker looks for projects whose model_version moved",
    )
    job_stale_seconds: float = Field(
        default=300.0, gt=0, validation_alias="JOB_STALE_SECONDS",
        description="a running job without a heartbeat for this long belongs to a dead process: a refresh is "
        "taken over and resumed, a pushed retrieve is marked interrupted",
    )

    # --- storage ---------------------------------------------------------------------------------
    data_dir: Path = Field(default=Path("data"), validation_alias="DATA_DIR")
    database_url: str | None = Field(default=None, validation_alias="DATABASE_URL")

    # --- prompting -------------------------------------------------------------------------------
    prompt_version: str = Field(default="v1", validation_alias="PROMPT_VERSION")
    few_shot_k: int = Field(default=8, ge=0, le=64, validation_alias="FEW_SHOT_K")
    few_shot_token_budget: int = Field(default=1500, ge=0, validation_alias="FEW_SHOT_TOKEN_BUDGET")
    examples_version_policy: str = Field(
        default="count", pattern="^(every|count|training)$", validation_alias="EXAMPLES_VERSION_POLICY"
    )
    examples_version_every: int = Field(default=20, ge=1, validation_alias="EXAMPLES_VERSION_EVERY")
    selection_refresh_seconds: float = Field(default=1.0, ge=0, validation_alias="SELECTION_REFRESH_SECONDS")
    embeddings_model: str | None = Field(
        default=None,
        validation_alias="EMBEDDINGS_MODEL",
        description="provider embeddings model for few-shot selection and label shortlists (unset: the "
        "bundled WordLlama vectors, or lexical with SELECTION_SIMILARITY=lexical)",
    )
    embeddings_base_url: str | None = Field(
        default=None, validation_alias="EMBEDDINGS_BASE_URL", description="defaults to the LLM's base URL"
    )
    embeddings_api_key: SecretStr | None = Field(
        default=None, validation_alias="EMBEDDINGS_API_KEY", description="defaults to the LLM's key"
    )
    label_shortlist_threshold: int = Field(
        default=40,
        ge=0,
        validation_alias="LABEL_SHORTLIST_THRESHOLD",
        description="a control with more labels than this shows only a per-task shortlist (0: never)",
    )
    label_shortlist_size: int = Field(default=20, ge=2, validation_alias="LABEL_SHORTLIST_SIZE")

    # --- long documents and private data (backend/predict/chunked.py) ----------------------------
    chunk_chars: int = Field(
        default=0,
        ge=0,
        validation_alias="CHUNK_CHARS",
        description="characters of a text per NER call; longer texts are split on sentence boundaries "
        "(0: from the model's context and LLM_MAX_TOKENS)",
    )
    chunk_overlap_chars: int = Field(
        default=200, ge=0, validation_alias="CHUNK_OVERLAP_CHARS",
        description="whole sentences of up to this many characters that a chunk repeats from the one before",
    )
    llm_context_tokens: int = Field(
        default=32_000, ge=512, validation_alias="LLM_CONTEXT_TOKENS",
        description="a provider's context window (the embedded model's is LOCAL_N_CTX): the budget of a "
        "classification call",
    )
    long_choices: str = Field(
        default="vote", pattern="^(select|vote)$", validation_alias="LONG_CHOICES",
        description="a <Choices> text over the budget: vote (one call per chunk, votes weighed by their "
        "scores; measured best, benchmarks/long_docs.py choices) or select (head, tail and the sentences "
        "nearest the labels, one call)",
    )
    pii_masking: str = Field(
        default="off", pattern="^(off|on|always)$", validation_alias="PII_MASKING",
        description="on: personal data is replaced by placeholders before a text goes to a hosted provider "
        "(not the embedded model); always: also for the embedded model",
    )
    pii_entities: str = Field(
        default="EMAIL,PHONE,IBAN,CREDIT_CARD,IP,PERSON", validation_alias="PII_ENTITIES",
        description="what PII_MASKING masks (converters/masking.py KINDS)",
    )
    selection_similarity: str = Field(
        default="embeddings",
        pattern="^(embeddings|lexical)$",
        validation_alias="SELECTION_SIMILARITY",
        description="few-shot selection and label shortlists by embeddings (EMBEDDINGS_MODEL, else the "
        "bundled WordLlama vectors; an outage falls back to lexical per task) or by word overlap (lexical)",
    )

    # --- the student: a classifier per single-choice <Choices> control, trained on reviewed examples --
    student_mode: str = Field(
        default="cascade",
        pattern="^(cascade|hint|off)$",
        validation_alias="STUDENT_MODE",
        description="cascade: a confident student answers without an LLM call (below STUDENT_MIN_EXAMPLES "
        "reviewed examples: hint); hint: the student's top labels lead the shortlist, the LLM decides; "
        "off: no student",
    )
    student_min_examples: int = Field(
        default=50, ge=2, validation_alias="STUDENT_MIN_EXAMPLES",
        description="reviewed examples a control needs before the student may answer alone (cascade)",
    )
    student_precision: float = Field(
        default=0.95, gt=0, le=1, validation_alias="STUDENT_PRECISION",
        description="the cascade answers alone above the probability whose cross-validated precision is this",
    )
    student_c: float = Field(default=10.0, gt=0, validation_alias="STUDENT_C",
                             description="inverse regularisation of the student's logistic regression")
    student_debounce_seconds: float = Field(
        default=5.0, ge=0, validation_alias="STUDENT_DEBOUNCE_SECONDS",
        description="quiet time after the example set changes before the student is retrained",
    )
    student_hint_labels: int = Field(
        default=5, ge=0, validation_alias="STUDENT_HINT_LABELS",
        description="the student's top labels that lead a label shortlist (hint and cascade)",
    )
    student_features: str = Field(
        default="words+vectors", pattern="^(words\\+vectors|chars\\+vectors|vectors)$",
        validation_alias="STUDENT_FEATURES",
        description="what the student reads beside the text's WordLlama vector: its words (TF-IDF of 1- and "
        "2-grams), its characters (`chars+vectors`: TF-IDF of 2- to 5-character pieces, for short noisy "
        "texts such as tweets), or nothing (`vectors`: smaller students, megabytes less per stored version "
        "with many labels)",
    )
    student_referee_sample: int = Field(
        default=40, ge=0, le=1000, validation_alias="STUDENT_REFEREE_SAMPLE",
        description="cascade: after training, the LLM answers this many held-out reviewed examples the student "
        "is unsure of, with its few-shot examples and (FEW_SHOT_K > 0) without, and is asked the better way "
        "from then on; the student then also answers at or above the switch chosen on them (every task when "
        "the LLM is not measurably better there, from STUDENT_TRUSTED_FROM reviews) (0: only the "
        "STUDENT_PRECISION threshold)",
    )
    student_trusted_from: int = Field(
        default=1000, ge=0, validation_alias="STUDENT_TRUSTED_FROM",
        description="cascade: reviewed examples from which the referee switches on the student's probability "
        "(the student answers above the switch, the LLM below where its wins are no coin toss); with fewer, "
        "the student is judged as a whole on its held-out examples and answers every task only when it got "
        "more of them right than the LLM, else the LLM answers every task (0: always the switch)",
    )
    student_blend: bool = Field(
        default=True, validation_alias="STUDENT_BLEND",
        description="cascade: where the LLM answers a single-choice task, its label probabilities and the "
        "student's are blended (a weighted product, the weights fitted on the referee's held-out reviews) "
        "when that predicts those reviews better than the LLM alone; false: the LLM's label stands",
    )
    student_set_coverage: float = Field(
        default=0.95, ge=0, lt=1, validation_alias="STUDENT_SET_COVERAGE",
        description="once a student has STUDENT_MIN_EXAMPLES, the LLM chooses a large label set's label "
        "among the student's top labels that held the right one for this share of held-out examples "
        "(0: the top STUDENT_HINT_LABELS only lead a shortlist of LABEL_SHORTLIST_SIZE)",
    )

    # --- Label Studio API (START_TRAINING resync; falls back to /setup's hostname + token) --------
    # with LABEL_STUDIO_URL set, pushes, resyncs and webhook installs go only there, whatever /setup says
    label_studio_url: str | None = Field(default=None, validation_alias="LABEL_STUDIO_URL")
    label_studio_api_key: SecretStr | None = Field(default=None, validation_alias="LABEL_STUDIO_API_KEY")

    def resolved_database_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite:///{(self.data_dir / 'lsllm.sqlite3').resolve()}"

    def api_key_value(self) -> str:
        """The key the openai client sends; local servers accept any non-empty string."""
        if self.llm_api_key is not None and self.llm_api_key.get_secret_value():
            return self.llm_api_key.get_secret_value()
        return "not-needed"

    def auth_enabled(self) -> bool:
        return bool(self.basic_auth_user) and self.basic_auth_pass is not None
