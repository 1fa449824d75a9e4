import ArgumentParser
import DiffEditCore

extension VAETiling.Norm: ExpressibleByArgument {}

/// `--tile`, `--tile-size PX` and `--tile-norm`, defined once for vae-encode and vae-decode:
/// `@OptionGroup var tileOption: TileOption`.
public struct TileOption: ParsableArguments {
    @Flag(name: .long, help: "Work in overlapping tiles blended as diffusers' enable_tiling() when the input exceeds a tile (default tile: the VAE's sample_size).")
    public var tile = false

    @Option(VAETiling.sizeOption, "Tile side in pixels (implies --tile); a multiple of 4 × the VAE's factor, 32 for Stable Diffusion", defaultText: "the VAE config's sample_size")
    public var tileSize: Int?

    @Option(name: .long, help: ArgumentHelp("With --tile: 'tile' (the default) normalises each tile with its own GroupNorm statistics as diffusers does (seams between tiles); 'shared' normalises every tile with statistics taken once from the whole input scaled down to one tile (fainter seams, the same memory).", valueName: "tile|shared"))
    public var tileNorm: VAETiling.Norm?

    public init() {}

    /// The tiling the options ask for with this VAE (nil: none), checked (VAETiling.option).
    public func tiling(vae: AutoencoderKL) throws -> VAETiling? {
        try VAETiling.option(tile: tile, size: tileSize, norm: tileNorm, vae: vae)
    }
}
