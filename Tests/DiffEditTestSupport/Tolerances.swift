/// Parity tolerances that both suites use (the in-process parity tests of DiffEditCoreTests and
/// the same stages through the built tools in DiffEditToolTests), kept in one place. Each is
/// about 10× the worst error measured on an AVX2-only AMD EPYC; README's Development section
/// lists every tolerance with its measurement.
public enum Tolerance {
    /// CLIP text embeddings (last hidden state, clip_skip): f32 throughout, summation order only;
    /// worst 1.9e-6 (sd2 clip_skip 1). See CLIPTextModelTests.
    public static let textEmbeddings: Double = 2e-5
    /// DiffEdit latents edited from an image (posterior, mask and inversion feeding denoise):
    /// worst 5.1e-5 (sd1 DPM through the tools; 4.2e-5 in-process). See DiffEditTests.
    public static let editedFromImage: Double = 6e-4
}
