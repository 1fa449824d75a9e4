import ArgumentParser
import DiffEditCore

/// `--deep-cache N`, defined once for the stages with a step loop over one trajectory (invert,
/// denoise): `@OptionGroup var deepCacheOption: DeepCacheOption`.
public struct DeepCacheOption: ParsableArguments {
    @Option(UNetFeatureCache.intervalOption, "DeepCache: run the whole UNet every N steps and only its shallow branch (the outermost blocks, with the deep features kept from the last whole step) between — about N× fewer deep evaluations; opt-in, the numbers then differ from diffusers' (1 = off)")
    public var deepCache: Int = 1

    public init() {}

    /// What the output records when caching is on.
    public var metadata: [String: String] { deepCache > 1 ? ["deep_cache": String(deepCache)] : [:] }
}
