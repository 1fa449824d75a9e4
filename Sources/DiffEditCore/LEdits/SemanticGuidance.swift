import Foundation

/// One edit concept of LEDITS++ (one editing prompt of diffusers' pipeline) and how it guides.
public struct EditConcept: Equatable, Sendable {
    /// reverse_editing_direction: remove the concept instead of adding it.
    public var remove = false
    /// edit_guidance_scale (s_e of the paper's eq. 12).
    public var scale: Float = 5
    /// edit_threshold (λ): the quantile of the masks; the top 1 − λ of the picture is edited.
    public var threshold: Float = 0.9
    /// edit_warmup_steps: no guidance in the first `warmup` steps.
    public var warmup = 0
    /// edit_cooldown_steps: no guidance from step `cooldown` on (nil: never stops).
    public var cooldown: Int?

    public init(remove: Bool = false, scale: Float = 5, threshold: Float = 0.9, warmup: Int = 0, cooldown: Int? = nil) {
        (self.remove, self.scale, self.threshold, self.warmup, self.cooldown) = (remove, scale, threshold, warmup, cooldown)
    }

    /// Whether the concept guides step i (diffusers: i < warmup or i ≥ cooldown skip it).
    public func isActive(step i: Int) -> Bool {
        i >= warmup && (cooldown.map { i < $0 } ?? true)
    }
}

/// Which masks confine each concept's guidance (the pipeline's use_cross_attn_mask and
/// use_intersect_mask).
public enum LEditsMaskMode: String, CaseIterable, Sendable {
    /// use_intersect_mask (diffusers' default): the cross-attention mask M¹ intersected with the
    /// noise mask M² (paper eq. 12) where t ≤ 800; M¹ alone at the noisier steps.
    case intersect
    /// use_cross_attn_mask without intersect: M¹ only.
    case attention
    /// Neither: M² only (the top quantile of |guidance| summed over channels).
    case noise

    public var usesAttention: Bool { self != .noise }
}

/// The UNet's cross-attention as semantic guidance reads it, after the step's forward pass: for
/// one batch item, the attention probabilities of the query grid `grid` averaged over the up- and
/// down-block cross-attention layers of that grid and their heads, summed over the text tokens
/// 1 … tokens (the start token left out): [grid.height × grid.width], row-major.
public protocol ConceptAttentionMaps: AnyObject {
    var grid: (height: Int, width: Int) { get }
    /// Forgets the maps of the last forward pass (called before each step's pass).
    func reset()
    /// `item`: the index in the UNet batch (0 … N − 1 are the unconditional rows).
    func conceptMap(item: Int, tokens: Int) throws -> [Float]
}

/// The UNet's attention store (CrossAttentionStore) is what the edit reads.
extension CrossAttentionStore: ConceptAttentionMaps {}

/// LEDITS++'s semantic guidance (Brack et al. 2024, eq. 12, after SEGA) as diffusers'
/// LEditsPPPipelineStableDiffusion.__call__ computes it, for each concept c at step i:
///
///     γ_c = s_c · (ε_c − ε_u) · (−1 if removing) · user_mask
///     M¹  = smoothed cross-attention map of c ≥ its λ-quantile, nearest-upsampled to the latent
///     M²  = Σ_channels |γ_c| ≥ its λ-quantile
///     γ_c ← γ_c · M¹·M² (intersect, t ≤ 800) | γ_c · M¹ (intersect at t > 800, or attention) | γ_c · M² (noise)
///     ε̂ = ε_u + Σ_c γ_c
///
/// Each operation is rounded to float32 in torch's order, and the quantile is torch.quantile's
/// linear interpolation, so the masks come out identical to diffusers'.
public enum SemanticGuidance {
    /// The step from which the intersect mode intersects (the pipeline's `if t <= 800`).
    public static let intersectFromTimestep = 800

    /// torch.quantile(values, q) with linear interpolation: q is taken as float32 (a tensor of
    /// the input's dtype), its rank q·(n − 1) in double; the weight, rounded to float32, blends
    /// the two neighbouring order statistics as torch's vectorised lerp does (one fused
    /// multiply-add, from the nearer end). Sorts `values` in place.
    public static func quantile(sorting values: inout [Float], _ q: Float) -> Float {
        precondition(!values.isEmpty)
        values.sort()
        let rank = Double(q) * Double(values.count - 1)
        let below = Int(rank), above = Int(rank.rounded(.up))
        let w = Float(rank - Double(below))
        let a = values[below], b = values[above]
        return abs(w) < 0.5 ? a.addingProduct(w, b - a) : b.addingProduct(w - 1, b - a)
    }

    /// Source index of output index `o` in F.interpolate's default 'nearest' mode from `n` to `m`
    /// cells: floor(o · (n/m)) in float32, clamped (the same size maps to itself, and twice the
    /// size to o/2, as torch's fast paths do; both agree with the formula).
    static func nearestSource(_ o: Int, from n: Int, to m: Int) -> Int {
        if n == m { return o }
        if m == 2 * n { return o >> 1 }
        let scale = Float(n) / Float(m)
        return min(Int((Float(o) * scale).rounded(.down)), n - 1)
    }

    /// M¹ of one concept and image: the map smoothed (AttentionMapSmoothing: reflect padding and
    /// the 3×3 Gaussian), thresholded at its `threshold`-quantile,
    /// nearest-upsampled from the grid to h × w (0/1 per latent cell).
    public static func attentionMask(_ map: [Float], grid: (height: Int, width: Int), threshold: Float,
                                     height h: Int, width w: Int) throws -> [Float] {
        let smoothed = try AttentionMapSmoothing.gaussian(map, height: grid.height, width: grid.width)
        var sorted = smoothed
        let q = quantile(sorting: &sorted, threshold)
        var out = [Float](repeating: 0, count: h * w)
        for y in 0..<h {
            let sy = nearestSource(y, from: grid.height, to: h)
            for x in 0..<w {
                out[y * w + x] = smoothed[sy * grid.width + nearestSource(x, from: grid.width, to: w)] >= q ? 1 : 0
            }
        }
        return out
    }
}
