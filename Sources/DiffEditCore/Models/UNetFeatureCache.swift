/// DeepCache (Ma, Fang and Wang 2023, arXiv 2312.00858): the UNet's deep features change little
/// between adjacent denoising steps, so every `interval`-th step runs the whole UNet and keeps the
/// feature where the last up block takes the first down block's outputs back in; the steps between
/// run only the shallow branch — conv_in, the first down block's first sub-block, and the last up
/// block from the sub-block that consumes it — with the kept feature in place of everything deeper
/// (the paper's uniform schedule at cache_layer_id 0, cache_block_id 0, its Stable Diffusion setting).
///
/// Opt-in: the numbers are no longer diffusers'. One cache follows one trajectory of one batch (a
/// sampler's or an inversion's loop); a call with another batch or latent size runs the whole UNet
/// and starts over.
public final class UNetFeatureCache {
    /// Whole-UNet steps happen every `interval` calls (1: always, i.e. no caching).
    public let interval: Int
    /// The kept feature and the sample shape it was made for.
    var feature: Tensor?
    var sampleShape: [Int] = []
    /// Calls so far, and how many ran the shallow branch only.
    public private(set) var calls = 0
    public private(set) var shallowCalls = 0

    /// `--deep-cache N`'s domain: 1 (off) to 50.
    public static let intervalOption = NumberOption<Int>("--deep-cache", .from(1, to: 50))

    public init(interval: Int) {
        precondition(interval >= 1)
        self.interval = interval
    }

    /// Whether the call about to run for `shape` may take the shallow branch.
    func takesShallowBranch(_ shape: [Int]) -> Bool {
        feature != nil && shape == sampleShape && calls % interval != 0
    }

    func keep(_ f: Tensor, for shape: [Int]) {
        feature = f
        sampleShape = shape
    }

    func count(shallow: Bool) {
        calls += 1
        if shallow { shallowCalls += 1 }
    }
}
