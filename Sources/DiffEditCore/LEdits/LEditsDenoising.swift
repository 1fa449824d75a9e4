import Foundation

/// LEDITS++ step 2: the edit (diffusers' LEditsPPPipelineStableDiffusion.__call__). From x_T of the
/// edit-friendly inversion, each step runs the UNet once on the batch [uncond; concept 1; …;
/// concept C] (each N images), adds the masked semantic guidance of every active concept to the
/// unconditional prediction (SemanticGuidance), and steps with the inversion's noise for that step
/// (DDIM with η = 1, or sde-dpmsolver++). With no concept active the image is reconstructed.
public struct LEditsDenoising {
    public struct Options {
        public var concepts: [EditConcept] = []
        public var mode = LEditsMaskMode.intersect
        public init() {}
    }

    public struct Result {
        public var latents: Tensor
        /// activation_mask: per step and concept the mask applied [T, C, N, 4, h, w] (zeros where
        /// the concept was not active; the cross-attention mask where the intersect mode did not
        /// intersect).
        public var masks: Tensor
        /// Per step: the guided prediction ε_u + Σγ [N, 4, h, w].
        public var predictions: [Tensor]
    }

    /// ε for a batch of latents at a timestep under a batch of embeddings (the UNet's forward
    /// pass; with cross-attention masks, one that fills `attention`).
    public typealias Predict = (_ sample: Tensor, _ timestep: Int, _ embeddings: Tensor) throws -> Tensor

    let predict: Predict
    let inChannels: Int
    let crossAttentionDim: Int
    public let attention: ConceptAttentionMaps?
    public var scheduler: LEditsScheduler
    public var options: Options

    /// `predict` runs the UNet whose input channels and cross-attention width are given;
    /// `attention` is the store it fills (needed unless the mode is .noise).
    public init(predict: @escaping Predict, inChannels: Int, crossAttentionDim: Int, attention: ConceptAttentionMaps?,
                scheduler: LEditsScheduler, options: Options) {
        self.predict = predict
        self.inChannels = inChannels
        self.crossAttentionDim = crossAttentionDim
        self.attention = attention
        self.scheduler = scheduler
        self.options = options
    }

    /// The UNet, handing its cross-attention of `attentionGrid` to a store when the mode reads it
    /// (nil grid: the noise masks only).
    public init(unet: UNet2DCondition, attentionGrid grid: (height: Int, width: Int)?, scheduler: LEditsScheduler,
                options: Options) {
        let store = grid.map { CrossAttentionStore(grid: $0) }
        self.init(predict: { try unet(sample: $0, timestep: Float($1), encoderHiddenStates: $2, attention: store) },
                  inChannels: unet.config.inChannels, crossAttentionDim: unet.config.crossAttentionDim[0],
                  attention: store, scheduler: scheduler, options: options)
    }

    /// The attention store's grid for latents of h × w: `given`, else diffusers' (int(h/4),
    /// int(w/4)); either must be a grid of the UNet's up/down cross-attention layers (the store
    /// would stay empty otherwise), and at least 2 × 2 (the smoothing's reflect padding).
    /// `givenAs` names where a given grid came from, for the message.
    public static func attentionGrid(_ given: (height: Int, width: Int)?, givenAs: String = "--attention-grid", unet: UNet2DCondition,
                                     latentHeight h: Int, latentWidth w: Int) throws -> (height: Int, width: Int) {
        let grid = given ?? (h / 4, w / 4)
        let grids = unet.crossAttentionGrids(latentHeight: h, latentWidth: w)
        guard grids.contains(where: { $0 == grid }) else {
            let have = grids.map { "\($0.height)x\($0.width)" }
            let which = given == nil ? "diffusers' attention grid \(grid.height)x\(grid.width) (a quarter of the \(h)x\(w) latent)"
                                     : "\(givenAs) \(grid.height)x\(grid.width)"
            let choose = have.isEmpty ? "use --ledits-mask noise (this UNet has no up/down cross-attention)"
                                      : "give --attention-grid \(have.joined(separator: " or ")), or --ledits-mask noise"
            throw ToolError("\(which) has no up/down cross-attention in this UNet (its grids at this size: \(have.isEmpty ? "none" : have.joined(separator: ", "))) — \(choose)")
        }
        guard grid.height >= 2, grid.width >= 2 else {
            throw ToolError("the attention grid \(grid.height)x\(grid.width) has a side of 1, which the 3×3 smoothing's reflect padding cannot pad (diffusers refuses it too) — choose a finer --attention-grid, or --ledits-mask noise")
        }
        return grid
    }

    /// Edits from `start` (x_T, [N, 4, h, w]) with the inversion's `noise` [N, T, 4, h, w] (first
    /// step first) over `timesteps` (high to low; the last T of the schedule of `totalSteps`).
    /// `concepts` [C, L, D] holds one embedding per concept (each used for all N images),
    /// `negative` [N, L, D] the unconditional one; `userMask` [N or 1, 1, h, w] multiplies every
    /// concept's guidance.
    public mutating func denoise(start: Tensor, noise: Tensor, timesteps: [Int], totalSteps: Int,
                                 concepts: Tensor, negative: Tensor, userMask: Tensor? = nil,
                                 progress: ProgressReporter? = nil) throws -> Result {
        let o = options
        guard start.rank == 4, start.shape[1] == inChannels else {
            throw ToolError("the LEDITS++ start latent has shape \(start.shape), expected [N, \(inChannels), h, w] — pipe in invert --method ledits's output")
        }
        let n = start.shape[0], ch = start.shape[1], h = start.shape[2], w = start.shape[3]
        let tCount = timesteps.count
        guard noise.shape == [n, tCount, ch, h, w] else {
            throw ToolError("the LEDITS++ noise has shape \(noise.shape), expected [\(n), \(tCount), \(ch), \(h), \(w)] — the stack is damaged; invert again with --method ledits")
        }
        let cCount = o.concepts.count
        guard concepts.rank == 3, concepts.shape[0] == cCount, concepts.shape[2] == crossAttentionDim else {
            throw ToolError("the concept embeddings have shape \(concepts.shape), expected [\(cCount), tokens, \(crossAttentionDim)] — give one --edit per concept, encoded with this model")
        }
        guard negative.rank == 3, negative.shape[0] == n, negative.shape[1] == concepts.shape[1], negative.shape[2] == crossAttentionDim else {
            throw ToolError("--negative has shape \(negative.shape), expected [\(n), \(concepts.shape[1]), \(crossAttentionDim)] — encode it with this model, as the --edit concepts")
        }
        let plane = h * w
        var user: [Float]?
        if let m = userMask {
            guard m.rank == 4, m.shape[1] == 1, m.shape[2] == h, m.shape[3] == w, m.shape[0] == 1 || m.shape[0] == n else {
                throw ToolError("--mask has shape \(m.shape), expected [1 or \(n), 1, \(h), \(w)] (one mask, or one per image, at the latent size)")
            }
            user = m.shape[0] == n ? m.data : Array((0..<n).map { _ in m.data }.joined())
        }
        let attention = o.mode.usesAttention && cCount > 0 ? self.attention : nil
        if o.mode.usesAttention && cCount > 0 && attention == nil {
            throw ToolError("--ledits-mask \(o.mode.rawValue) needs the UNet's cross-attention maps — use --ledits-mask noise")
        }
        // The concepts' text tokens after the start token (the pipeline's num_edit_tokens: the
        // tokenizer's padded length − 2, 75 for a 77-token encoder).
        let tokens = concepts.shape[1] - 2

        try scheduler.setTimesteps(totalSteps)
        guard Array(scheduler.timesteps.suffix(tCount)) == timesteps else {
            throw ToolError("the stack's timesteps are not the last \(tCount) of the \(scheduler.kind.rawValue) schedule of \(totalSteps) steps — the stack is damaged or was made with another scheduler config; invert again")
        }

        // [uncond × N; concept 1 × N; …]: the pipeline's text_embeddings.
        let rowCount = concepts.shape[1] * concepts.shape[2]
        var rows = negative.data
        rows.reserveCapacity((1 + cCount) * n * rowCount)
        for c in 0..<cCount {
            let row = concepts.data[(c * rowCount)..<((c + 1) * rowCount)]
            for _ in 0..<n { rows.append(contentsOf: row) }
        }
        let embeddings = Tensor(shape: [(1 + cCount) * n, concepts.shape[1], concepts.shape[2]], data: rows)

        let inner = ch * plane
        var masks = [Float](repeating: 0, count: tCount * cCount * n * inner)
        var latents = start
        var predictions: [Tensor] = []
        var tmp = [Float](repeating: 0, count: inner)
        var attentionMask = [Float](repeating: 0, count: plane)
        var noiseMask = [Float](repeating: 0, count: plane)
        var sums = [Float](repeating: 0, count: plane)
        var sorted = [Float](repeating: 0, count: plane)
        var guided = [Float](repeating: 0, count: n * inner)  // Σ_c γ_c, then ε̂
        progress?.begin("denoising step", total: tCount)
        for (i, t) in timesteps.enumerated() {
            let input = Tensor.concat(batch: Array(repeating: latents, count: 1 + cCount))
            attention?.reset()
            let out = try predict(input, t, embeddings)
            for k in 0..<guided.count { guided[k] = 0 }
            for (c, concept) in o.concepts.enumerated() where concept.isActive(step: i) {
                for b in 0..<n {
                    let u = b * inner, e = ((1 + c) * n + b) * inner
                    for k in 0..<inner {
                        var g = out.data[e + k] - out.data[u + k]
                        if concept.remove { g = -g }
                        g = g * concept.scale
                        if let user { g = g * user[b * plane + k % plane] }
                        tmp[k] = g
                    }
                    let maskBase = ((i * cCount + c) * n + b) * inner
                    if let attention {
                        let map = try attention.conceptMap(item: (1 + c) * n + b, tokens: tokens)
                        attentionMask = try SemanticGuidance.attentionMask(map, grid: attention.grid, threshold: concept.threshold,
                                                                          height: h, width: w)
                        for k in 0..<inner { masks[maskBase + k] = attentionMask[k % plane] }
                    }
                    let noiseMasked = o.mode == .noise || (o.mode == .intersect && t <= SemanticGuidance.intersectFromTimestep)
                    if noiseMasked {
                        // M²: Σ over channels of |γ|, its λ-quantile over the picture.
                        for p in 0..<plane {
                            var s: Float = 0
                            for cc in 0..<ch { s += abs(tmp[cc * plane + p]) }
                            sums[p] = s
                        }
                        for p in 0..<plane { sorted[p] = sums[p] }
                        let q = SemanticGuidance.quantile(sorting: &sorted, concept.threshold)
                        for p in 0..<plane {
                            noiseMask[p] = sums[p] >= q ? 1 : 0
                            if o.mode == .intersect { noiseMask[p] = noiseMask[p] * attentionMask[p] }
                        }
                        for k in 0..<inner { masks[maskBase + k] = noiseMask[k % plane] }
                    }
                    let applied = noiseMasked ? noiseMask : attentionMask
                    for k in 0..<inner {
                        guided[b * inner + k] += tmp[k] * applied[k % plane]
                    }
                }
            }
            for k in 0..<guided.count { guided[k] = out.data[k] + guided[k] }
            let eps = Tensor(shape: latents.shape, data: guided)
            latents = try scheduler.step(noisePrediction: eps, timestep: t, sample: latents, noise: noise.step(i))
            predictions.append(eps)
            progress?.update(i + 1)
        }
        return Result(latents: latents, masks: Tensor(shape: [tCount, cCount, n, ch, h, w], data: masks),
                      predictions: predictions)
    }
}
