/// The numeric options the three DiffEdit stages share: one domain each, in every tool.
public enum StageNumbers {
    public static let steps = NumberOption<Int>("--steps", .steps)
    public static let strength = NumberOption<Double>("--strength", .fraction)
    public static let guidance = NumberOption<Float>("--guidance", .guidance)
    public static let seed = NumberOption<UInt64>("--seed", .seed)
    public static let dilate = NumberOption<Int>("--dilate", .from(0, to: MaskDilation.maxCells))
    /// DDIM's η: 0 deterministic DDIM, 1 the DDPM-like variance (diffusers' DDIMScheduler eta).
    public static let eta = NumberOption<Float>("--eta", .from(0, to: 1))
    /// --guidance's abstract, the same in every stage.
    public static let guidanceAbstract = "Classifier-free guidance scale (1 or less turns guidance off, as in diffusers)"
}

/// noise-diff-mask's own numeric options (its command line and its section of
/// diffedit_defaults.json: one domain for both).
public enum MaskNumbers {
    public static let maps = NumberOption<Int>("--maps", .from(1, to: 10_000))
    public static let encodeStrength = NumberOption<Double>("--encode-strength", .fraction)
    public static let thresholdRatio = NumberOption<Float>("--threshold-ratio", .above(0, atMost: 1000))
}
