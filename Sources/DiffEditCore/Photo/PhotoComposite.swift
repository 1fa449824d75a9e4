/// composite's work: the edit, made at the model's size, put back into the full-size photo
/// through the mask (PixelMask, PhotoBlend), the rest of the photo left bit for bit as it was.
public struct PhotoComposite {
    public struct Options {
        /// Feather width in the original's pixels; nil: half a mask cell (defaultFeather).
        public var feather: Int?
        public var dilate = 0
        /// A pixel is in the mask where the resampled mask is above this.
        public var threshold: Float = 0.5
        /// The rectangle of the original the edit and the mask depict; nil: all of it.
        public var region: PixelBox?
        /// The guided filter's radius in the original's pixels (0: no refinement, the resampled
        /// mask thresholded as it is); nil: four mask cells for a tensor mask, 0 for a mask image
        /// (defaultRefine). Its ε is on guide values in [0, 1].
        public var refine: Int?
        public var refineEpsilon: Float = 0.01
        public var refineGuide: RefineGuide = .both
        public init() {}
    }

    /// What guides the mask's refinement: the original's edges, or the original's and the
    /// edit's together (a shape the edit draws where the original has none has edges only there).
    public enum RefineGuide: String, CaseIterable, Sendable {
        case original, both
    }

    /// Half a mask cell in the original's pixels: the region's width over the mask's, halved,
    /// rounded, at least 1. (One cell, the blur a cell of the latent grid stands for, was the
    /// default before the refinement; with the mask on the picture's edges half a cell keeps the
    /// background 1.6 dB better at the same success: demo/BENCHMARK.md.)
    public static func defaultFeather(regionWidth: Int, maskWidth: Int) -> Int {
        max(1, Int((Double(regionWidth) / Double(maskWidth) / 2).rounded()))
    }

    /// The refinement's radius: four cells of the grid the mask was made on, in the original's
    /// pixels (the region's width over the mask's cells across it, times 4, rounded, at least 1)
    /// for a tensor mask — the window must hold background the map is sure of beyond the latent
    /// grid's blur, about a cell each side —; 0 for a mask image, taken as drawn. A mask cut by
    /// tensor cut is resampled to another grid: it records the whole mask's cells its box spans
    /// (MaskCut.regionCells), and those count. Chosen on the demo's tuning scenes (demo/BENCHMARK.md).
    public static func defaultRefine(regionWidth: Int, mask: MaskSource) -> Int {
        guard let record = mask.record else { return 0 }
        var cellsAcross = Double(mask.map.width)
        if let cells = record.metadata[MaskCut.regionCells], let w = cells.split(separator: "x").first.flatMap({ Double($0) }),
           w.isFinite, w > 0 {
            cellsAcross = w
        }
        return max(1, Int((4 * Double(regionWidth) / cellsAcross).rounded()))
    }

    public let options: Options
    public init(options: Options) { self.options = options }

    /// Checks the inputs against each other; the region, the feather in use and the pixel mask.
    public func prepare(original: NetpbmLevels, edit: NetpbmLevels, mask: MaskSource,
                        maskLabel: String) throws -> (region: PixelBox, feather: Int, refine: Int, mask: PixelMask) {
        let whole = PixelBox(x: 0, y: 0, width: original.width, height: original.height)
        let region = options.region ?? whole
        guard whole.contains(region) else {
            throw ToolError("--region \(region) is not inside the \(original.width)x\(original.height) original — give X,Y,W,H with X+W ≤ \(original.width) and Y+H ≤ \(original.height) (tensor bbox makes one)")
        }
        guard mask.fits(width: edit.width, height: edit.height) else {
            throw ToolError("\(maskLabel) is \(mask.map.width)x\(mask.map.height) cells, not the shape of the \(edit.width)x\(edit.height) edit — give the mask made for that edit (for a region, cut it with tensor cut)")
        }
        let feather = options.feather ?? Self.defaultFeather(regionWidth: region.width, maskWidth: mask.map.width)
        let radius = options.refine ?? Self.defaultRefine(regionWidth: region.width, mask: mask)
        guard radius > 0 else {
            return (region, feather, 0, PixelMask(map: mask.map, width: region.width, height: region.height,
                                                  threshold: options.threshold, dilate: options.dilate, feather: feather))
        }
        return withGuide(original: original, edit: edit, region: region, radius: radius) { refine in
            (region, feather, radius, PixelMask(map: mask.map, width: region.width, height: region.height,
                                                threshold: options.threshold, dilate: options.dilate, feather: feather,
                                                refine: refine))
        }
    }

    /// The refinement's guide over the region: the original's colour samples (alpha left out),
    /// then with `.both` the edit's resampled to the region as the blend takes them, all / maxval.
    func withGuide<T>(original: NetpbmLevels, edit: NetpbmLevels, region: PixelBox, radius: Int,
                      _ body: (PixelMask.Refinement) throws -> T) rethrows -> T {
        let colors = original.colorChannels, depth = original.depth, stride = original.width
        let scale = 1 / Float(original.maxval)
        let both = options.refineGuide == .both
        let channels = both ? 2 * colors : colors
        let levels = original.levels
        var editResample: SeparableResample?
        if both {
            let samples = PhotoBlend.editSamples(edit, channels: colors, originalMaxval: original.maxval)
            editResample = samples.withUnsafeBufferPointer { s in
                SeparableResample(s, channels: colors, x: .image(source: edit.width, to: region.width),
                                  y: .image(source: edit.height, to: region.height))
            }
        }
        let editRow = UnsafeMutableBufferPointer<Float>.allocate(capacity: both ? region.width * colors : 0)
        defer { editRow.deallocate() }
        let refine = PixelMask.Refinement(radius: radius, epsilon: options.refineEpsilon, channels: channels) { y, x, out in
            let n = out.count / channels
            levels.withUnsafeBufferPointer { l in
                let base = (region.y + y) * stride + region.x + x
                for i in 0..<n {
                    for c in 0..<colors { out[i * channels + c] = Float(l[(base + i) * depth + c]) * scale }
                }
            }
            if let editResample {
                editResample.row(y, into: editRow)
                for i in 0..<n {
                    for c in 0..<colors { out[i * channels + colors + c] = editRow[(x + i) * colors + c] * scale }
                }
            }
        }
        return try body(refine)
    }

    /// Blends the edit into `original` in place (no copy of a 12-megapixel raster): it keeps its
    /// format, size, maxval and tuple type.
    public func run(blendingInto original: inout NetpbmLevels, edit: NetpbmLevels, mask: MaskSource, maskLabel: String) throws
        -> (pixelMask: PixelMask, region: PixelBox, feather: Int, refine: Int) {
        let (region, feather, refine, pixels) = try prepare(original: original, edit: edit, mask: mask, maskLabel: maskLabel)
        PhotoBlend.blend(edit, into: &original, at: (region.x, region.y), mask: pixels)
        return (pixels, region, feather, refine)
    }

    /// The binary pixel mask (after threshold and dilation, before feathering) as a PGM of the
    /// original's size, white inside, black elsewhere (and outside the region).
    public static func maskImage(_ mask: PixelMask, region: PixelBox, width: Int, height: Int) -> NetpbmLevels {
        var levels = [UInt16](repeating: 0, count: width * height)
        mask.inside.withUnsafeBufferPointer { m in
            levels.withUnsafeMutableBufferPointer { l in
                for y in 0..<region.height {
                    let src = y * region.width, dst = (region.y + y) * width + region.x
                    for x in 0..<region.width where m[src + x] != 0 { l[dst + x] = 255 }
                }
            }
        }
        return NetpbmLevels(width: width, height: height, depth: 1, maxval: 255, format: NetpbmLevels.rawPGM,
                            tupleType: "GRAYSCALE", levels: levels)
    }
}

extension PhotoComposite {
    /// composite's three inputs, read and checked against each other where they can be alone.
    public struct Inputs {
        public var original: NetpbmLevels
        public var edit: NetpbmLevels
        public var mask: MaskSource

        /// Paths ("-": stdin, for one of them at most). `region`: the one --region gives, checked
        /// against the rectangle a mask cut by tensor cut records.
        public static func read(original: String, mask: String, edited: String, region: PixelBox?) throws -> Inputs {
            let stdinUsers = [("--original", original), ("--mask", mask), ("EDITED", edited)].filter { $0.1 == "-" }.map(\.0)
            guard stdinUsers.count <= 1 else {
                throw ToolError("\(stdinUsers.joined(separator: " and ")) each read stdin — give all but one of them as files")
            }
            let maskSource = try MaskSource.load(mask, option: "--mask")
            if let cut = maskSource.record?.metadata[MetadataKey.region], cut != region?.description {
                throw ToolError("--mask \(mask) was cut from the region \(cut) of the photo (tensor cut), but \(region.map { "--region is \($0)" } ?? "no --region is given") — give --region \(cut)")
            }
            let photo = try image(original, option: "--original", what: "the original photo")
            let edit = try image(edited, option: edited == "-" ? nil : "EDITED", what: "the edit")
            if let of = maskSource.record?.metadata[MetadataKey.regionOf], of != "\(photo.width)x\(photo.height)" {
                throw ToolError("--mask \(mask) was cut from a \(of) photo, the original is \(photo.width)x\(photo.height) — cut the mask made for this photo")
            }
            return Inputs(original: photo, edit: edit, mask: maskSource)
        }

        static func image(_ path: String, option: String?, what: String) throws -> NetpbmLevels {
            let prefix = option.map { "\($0) " } ?? ""
            do {
                let reader = try ByteReader(path: path)
                return try NetpbmLevels.readOne(reader, what: what) { w, h, d in
                    // Levels (2 bytes a sample), the file read whole (up to 2) and the mask's bytes and distances.
                    try MemoryBudget.require(Double(w) * Double(h) * (Double(d) * 4 + 6), for: "\(what), \(w)x\(h)x\(d)",
                                             remedy: "cut the region to edit out of it first, e.g. pamcut")
                }
            } catch let e as ToolError {
                throw ToolError(e.message.hasPrefix(path + ":") || e.message.hasPrefix("stdin:") ? prefix + e.message : "\(prefix)\(path): \(e.message)")
            }
        }
    }
}
