/// The hyper-parameters of transformers' CLIPTextModel, from text_encoder/config.json.
public struct CLIPTextConfig: Equatable {
    public enum Activation: String { case quickGelu = "quick_gelu", gelu = "gelu" }

    public var vocabSize: Int
    public var hiddenSize: Int
    public var intermediateSize: Int
    public var layers: Int
    public var heads: Int
    public var maxPositions: Int
    public var activation: Activation
    public var layerNormEps: Float

    public init(vocabSize: Int, hiddenSize: Int, intermediateSize: Int, layers: Int, heads: Int,
                maxPositions: Int, activation: Activation, layerNormEps: Float) {
        self.vocabSize = vocabSize
        self.hiddenSize = hiddenSize
        self.intermediateSize = intermediateSize
        self.layers = layers
        self.heads = heads
        self.maxPositions = maxPositions
        self.activation = activation
        self.layerNormEps = layerNormEps
    }

    /// Reads the config, with CLIPTextConfig's defaults for absent keys, and checks it.
    public init(_ c: JSONConfig) throws {
        vocabSize = try c.int("vocab_size", default: 49408)
        hiddenSize = try c.int("hidden_size", default: 512)
        intermediateSize = try c.int("intermediate_size", default: 2048)
        layers = try c.int("num_hidden_layers", default: 12)
        heads = try c.int("num_attention_heads", default: 8)
        maxPositions = try c.int("max_position_embeddings", default: 77)
        let act = try c.string("hidden_act", default: "quick_gelu")
        // "gelu" is torch's exact (erf) GELU in transformers' ACT2FN.
        guard let a = Activation(rawValue: act) else {
            throw ToolError("\(c.label): hidden_act '\(act)' is not supported (quick_gelu or gelu, as CLIP text encoders use)")
        }
        activation = a
        layerNormEps = Float(try c.double("layer_norm_eps", default: 1e-5))
        for (name, v) in [("vocab_size", vocabSize), ("hidden_size", hiddenSize), ("intermediate_size", intermediateSize),
                          ("num_attention_heads", heads), ("max_position_embeddings", maxPositions)]
        where v < 1 || v > 1 << 20 {
            throw ToolError("\(c.label): \(name) = \(v) is out of range")
        }
        guard layers >= 0, layers <= 1024 else { throw ToolError("\(c.label): num_hidden_layers = \(layers) is out of range") }
        guard hiddenSize % heads == 0 else {
            throw ToolError("\(c.label): hidden_size \(hiddenSize) does not split into \(heads) attention heads")
        }
        guard layerNormEps > 0, layerNormEps.isFinite else { throw ToolError("\(c.label): layer_norm_eps must be positive") }
    }
}

/// transformers' CLIPTextModel, the text encoder of Stable Diffusion: token + position
/// embeddings, `layers` pre-LN transformer blocks with causal self-attention, final LayerNorm.
/// The output is `last_hidden_state`, what diffusers' encode_prompt feeds the UNet.
public final class CLIPTextModel {
    /// One pre-LN encoder layer: x += self_attn(layer_norm1(x)); x += mlp(layer_norm2(x)).
    struct EncoderLayer {
        let layerNorm1: LayerNormLayer
        let selfAttn: AttentionLayer
        let layerNorm2: LayerNormLayer
        let fc1: LinearLayer
        let fc2: LinearLayer
    }

    public let config: CLIPTextConfig
    /// Threads, workspace, profiler and FLOP counter of this encoder's forward passes.
    public let context: ComputeContext
    let weights: WeightStore
    /// "text_model." in checkpoints saved by transformers 4 (the Hub's SD folders), "" in
    /// those saved by transformers 5.
    let prefix: String
    /// The token table, left in the mapped file (see init).
    let tokenEntry: SafeTensorsFile.Entry
    /// Rows appended to the token table (textual-inversion embeddings), f32, ids from
    /// `config.vocabSize` on: diffusers' `resize_token_embeddings` + `input_embeddings.data[id] = v`.
    public private(set) var appendedTokenRows: [Float] = []
    let positionEmbedding: Parameter
    let layers: [EncoderLayer]
    let finalLayerNorm: LayerNormLayer

    public convenience init(folder: ModelFolder, context: ComputeContext = ComputeContext()) throws {
        let config = try CLIPTextConfig(folder.config("text_encoder"))
        try self.init(config: config, weights: folder.weights("text_encoder"), context: context, lora: folder.lora)
    }

    /// `lora`: adapters whose text-encoder part is added to the encoder's linears.
    public init(config: CLIPTextConfig, weights: WeightStore, context: ComputeContext = ComputeContext(),
                lora: LoRASet? = nil) throws {
        self.config = config
        self.context = context
        self.weights = weights
        let tokenName = "embeddings.token_embedding.weight"
        let prefix = weights.contains(tokenName) && !weights.contains("text_model." + tokenName) ? "" : "text_model."
        let d = config.hiddenSize, f = config.intermediateSize, eps = config.layerNormEps
        let l = ParameterLoader(source: weights, readsInPlace: context.policy.readsWeightsInPlace, lora: lora, part: .textEncoder)
        // The token table is only checked here; encode() gathers the rows it needs straight
        // from the mapped file (49408 × 1024 floats would be a large copy for a few ids).
        let tokenEntry = try weights.entry(prefix + tokenName, shape: [config.vocabSize, d])
        guard [.F32, .F16, .BF16].contains(tokenEntry.dtype) else {
            throw ToolError("text_encoder: weight '\(prefix + tokenName)' has dtype \(tokenEntry.dtype.rawValue); expected F32, F16 or BF16")
        }
        positionEmbedding = try l.load(prefix + "embeddings.position_embedding.weight", [config.maxPositions, d])
        layers = try (0..<config.layers).map { i in
            let p = prefix + "encoder.layers.\(i)."
            return EncoderLayer(
                layerNorm1: try LayerNormLayer(l, p + "layer_norm1", dim: d, eps: eps),
                selfAttn: try AttentionLayer(l, p + "self_attn", names: .clip, queryDim: d, crossDim: nil, heads: config.heads,
                                             headDim: d / config.heads, projectionBias: true, causal: true),
                layerNorm2: try LayerNormLayer(l, p + "layer_norm2", dim: d, eps: eps),
                fc1: try LinearLayer(l, p + "mlp.fc1", in: d, out: f),
                fc2: try LinearLayer(l, p + "mlp.fc2", in: f, out: d))
        }
        // A checkpoint with more layers than the config names is another model.
        if weights.contains(prefix + "encoder.layers.\(config.layers).layer_norm1.weight") {
            throw ToolError("text_encoder: the weights have more than the \(config.layers) layers text_encoder/config.json names — config and weights are from different models")
        }
        self.prefix = prefix
        self.tokenEntry = tokenEntry
        finalLayerNorm = try LayerNormLayer(l, prefix + "final_layer_norm", dim: d, eps: eps)
        try l.checkLoRAUsed(model: "this text encoder")
    }

    /// Ids the encoder takes: the vocabulary and the appended rows.
    public var tokenCount: Int { config.vocabSize + appendedTokenRows.count / config.hiddenSize }

    /// Appends rows (`count × hiddenSize` floats) to the token table; returns the first new id.
    @discardableResult
    public func appendTokenRows(_ rows: [Float]) -> Int {
        precondition(rows.count % config.hiddenSize == 0, "token rows must be hiddenSize wide")
        let first = tokenCount
        appendedTokenRows.append(contentsOf: rows)
        return first
    }

    /// Embeddings of token ids [batch, length] (row-major): the hidden state after
    /// `layers − clipSkip` blocks, through the final LayerNorm. clipSkip 0 is
    /// `last_hidden_state`; clipSkip k is diffusers' `clip_skip=k`
    /// (`final_layer_norm(hidden_states[-(k + 1)])`). Returns [batch, length, hiddenSize].
    public func encode(ids: [Int32], batch: Int, length: Int, clipSkip: Int = 0) throws -> Tensor {
        guard clipSkip >= 0, clipSkip <= config.layers else {
            throw ToolError("--clip-skip \(clipSkip) is out of range: the text encoder has \(config.layers) layers (use 0…\(config.layers))")
        }
        guard ids.count == batch * length else {
            throw ToolError("token ids: \(ids.count) ids do not make \(batch) rows of \(length)")
        }
        // Prompts are independent: encode a few at a time so that the intermediate activations
        // (the MLP's are 4× the output) stay small whatever the batch.
        var out = [Float]()
        out.reserveCapacity(batch * length * config.hiddenSize)
        var start = 0
        while start < batch {
            let n = min(CLIPTextModel.promptsPerPass, batch - start)
            let h = try hiddenState(ids: Array(ids[(start * length)..<((start + n) * length)]), batch: n, length: length,
                                    layers: config.layers - clipSkip)
            out.append(contentsOf: finalLayerNorm(Activation(h, context), context).tensor.data)
            start += n
        }
        return Tensor(shape: [batch, length, config.hiddenSize], data: out)
    }

    /// Prompts per forward pass in `encode` (16 × 77 rows keep the matrix products efficient).
    public static let promptsPerPass = 16

    /// transformers' `hidden_states[layers]`: the embeddings (layers = 0) or the output of block
    /// `layers`, before the final LayerNorm. Returns [batch, length, hiddenSize].
    public func hiddenState(ids: [Int32], batch: Int, length: Int, layers count: Int) throws -> Tensor {
        let d = config.hiddenSize
        precondition(count >= 0 && count <= config.layers)
        guard ids.count == batch * length else {
            throw ToolError("token ids: \(ids.count) ids do not make \(batch) rows of \(length)")
        }
        guard length >= 1, length <= config.maxPositions else {
            throw ToolError("token ids: sequences of \(length) tokens, but the text encoder takes at most \(config.maxPositions) — tokenize with --max-length \(config.maxPositions)")
        }
        let known = tokenCount
        for (k, id) in ids.enumerated() where id < 0 || Int(id) >= known {
            throw ToolError("token id \(id) at prompt \(k / length + 1), position \(k % length) is outside the vocabulary of \(known) — were the ids made with this model's tokenizer?")
        }

        // embeddings = token_embedding(ids) + position_embedding(0..<length)
        let ctx = context
        let x = Activation(Tensor(shape: [batch, length, d], data: gatherTokenRows(ids)), ctx)
        for b in 0..<batch {
            Pointwise.add(ctx, x.pointer + b * length * d, positionEmbedding.pointer, count: length * d)
        }
        for layer in layers.prefix(count) {
            // Pre-LN self-attention block, causal mask only: diffusers passes no attention
            // mask for SD (text_encoder.config.use_attention_mask is unset), so padding tokens
            // are attended to like any other token before them.
            let a = layer.selfAttn(layer.layerNorm1(x, ctx), encoder: nil, ctx)
            Pointwise.add(ctx, x.pointer, a.pointer, count: x.count)
            // Pre-LN MLP block: fc2(act(fc1(LN(x)))).
            let m = layer.fc1(layer.layerNorm2(x, ctx), ctx)
            switch config.activation {
            case .quickGelu: Pointwise.quickGelu(ctx, m.pointer, count: m.count)
            case .gelu: Pointwise.gelu(ctx, m.pointer, count: m.count)
            }
            let f = layer.fc2(m, ctx)
            Pointwise.add(ctx, x.pointer, f.pointer, count: x.count)
        }
        return x.tensor
    }

    /// Rows of the token embedding table for `ids` (already range-checked), converted to f32.
    func gatherTokenRows(_ ids: [Int32]) -> [Float] {
        let d = config.hiddenSize, vocab = config.vocabSize
        let entry = tokenEntry
        let raw = weights.file.rawBytes(entry)
        var out = [Float](repeating: 0, count: ids.count * d)
        out.withUnsafeMutableBufferPointer { o in
            for (r, id) in ids.enumerated() {
                let dst = o.baseAddress! + r * d
                if Int(id) >= vocab {
                    appendedTokenRows.withUnsafeBufferPointer { rows in
                        dst.update(from: rows.baseAddress! + (Int(id) - vocab) * d, count: d)
                    }
                    continue
                }
                let src = Int(id) * d
                switch entry.dtype {
                case .F16:
                    for i in 0..<d { dst[i] = HalfFloat.f16ToFloat(raw.loadUnaligned(fromByteOffset: (src + i) * 2, as: UInt16.self)) }
                case .BF16:
                    for i in 0..<d { dst[i] = HalfFloat.bf16ToFloat(raw.loadUnaligned(fromByteOffset: (src + i) * 2, as: UInt16.self)) }
                default:
                    for i in 0..<d { dst[i] = raw.loadUnaligned(fromByteOffset: (src + i) * 4, as: Float.self) }
                }
            }
        }
        return out
    }
}
