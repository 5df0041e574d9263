"""Configuration of a redpack model (RedLLM or DecLLM) exported by `redpack export --format hf`."""

from transformers import PretrainedConfig


class RedpackConfig(PretrainedConfig):
    """Shapes and constants of a RedLLM (`arch="red"`, encoder-decoder) or a DecLLM
    (`arch="dec"`, decoder-only) as redpack trains them.

    `num_hidden_layers` is DecLLM's depth, or RedLLM's decoder depth (`num_decoder_layers`);
    `attention_output_norm` normalizes each head's attention output (RedLLM);
    `bidirectional_prefix` marks a "DecLLM + BiAttn" model, whose prompt attends to itself
    bidirectionally (see `RedpackForCausalLM`).
    """

    model_type = "redpack"
    keys_to_ignore_at_inference = ["past_key_values"]

    def __init__(
        self,
        arch="dec",
        vocab_size=32000,
        hidden_size=64,
        intermediate_size=256,
        num_attention_heads=2,
        head_dim=32,
        num_hidden_layers=2,
        num_encoder_layers=0,
        num_decoder_layers=0,
        rope_theta=10000.0,
        rms_norm_eps=1e-6,
        attention_output_norm=False,
        bidirectional_prefix=False,
        max_position_embeddings=2048,
        tie_word_embeddings=True,
        use_cache=False,
        **kwargs,
    ):
        self.arch = arch
        self.vocab_size = vocab_size
        self.hidden_size = hidden_size
        self.intermediate_size = intermediate_size
        self.num_attention_heads = num_attention_heads
        self.head_dim = head_dim
        self.num_hidden_layers = num_hidden_layers
        self.num_encoder_layers = num_encoder_layers
        self.num_decoder_layers = num_decoder_layers
        self.rope_theta = rope_theta
        self.rms_norm_eps = rms_norm_eps
        self.attention_output_norm = attention_output_norm
        self.bidirectional_prefix = bidirectional_prefix
        self.max_position_embeddings = max_position_embeddings
        self.use_cache = use_cache
        kwargs.setdefault("is_encoder_decoder", arch == "red")
        super().__init__(tie_word_embeddings=tie_word_embeddings, **kwargs)
