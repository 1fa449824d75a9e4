/// denoise's --mask: noise-diff-mask's tensor stream, or a mask from outside as a grey netpbm
/// image (PGM, PBM, or PAM of depth 1) of any size — hand-drawn, or from another tool. An image
/// is reduced to the latent grid by area average (each latent cell takes the mean of the pixels
/// it covers, fractional pixels weighted by the part they cover) and thresholded at 0.5: a cell
/// half or more white is edited. White (maxval; 1 in a PBM's netpbm reading, i.e. a 0 bit) means
/// "edit", black "keep", as in diffusers' mask_image.
public enum MaskImport {
    /// The mask [N, 1, h, w] for latents of h × w cells, from the file given to `option`.
    public static func load(_ path: String, option: String = "--mask", folder: ModelFolder,
                            latentHeight h: Int, latentWidth w: Int, pictureSize: (width: Int, height: Int)?,
                            allowNonfinite: Bool) throws -> Tensor {
        let reader: ByteReader
        do { reader = try ByteReader(path: path) } catch let e as ToolError { throw ToolError("\(option) \(path): \(e.message)") }
        // A terminal on stdin is left to the tensor reader, which refuses it (peeking would wait for typing).
        let terminal = reader.fd == 0 && reader.isTerminal
        guard !terminal, isNetpbm(try reader.peekBytes(upTo: 2)) else {
            let records = try DiffEditIO.records(path, option: option, allowNonfinite: allowNonfinite,
                                                 reader: terminal ? nil : reader)
            let r = try DiffEditIO.pick(records, RecordName.mask, option: option, what: "noise-diff-mask's output")
            try DiffEditIO.checkModel(r, folder, option: option)
            if r.metadata["scale"] != nil {
                throw ToolError("\(option) was written at image size (noise-diff-mask --image-size) — make it without --image-size, or give it as an image: tensor to-image --range 0:1 \(path) > mask.pgm")
            }
            return r.tensor()
        }
        let label = "\(option) \(path)"
        let images = try readGreyImages(reader, label: label)
        var data: [Float] = []
        data.reserveCapacity(images.count * h * w)
        for (i, image) in images.enumerated() {
            // The image must cover the latents' picture: the same aspect ratio within one cell.
            let cellsWide = Double(image.width) * Double(h) / Double(image.height)
            let cellsHigh = Double(image.height) * Double(w) / Double(image.width)
            guard abs(cellsWide - Double(w)) <= 1, abs(cellsHigh - Double(h)) <= 1 else {
                let picture = pictureSize.map { "the encoded picture, \($0.width)x\($0.height)" } ?? "the encoded picture"
                let fit = pictureSize.map { "pamscale -width \($0.width) -height \($0.height)" } ?? "pamscale -width W -height H"
                throw ToolError("\(label): image \(i) is \(image.width)x\(image.height), not the shape of \(picture) (\(w)x\(h) latent cells) — draw the mask on that picture, or fit it, e.g. \(fit) mask.pgm")
            }
            data += reduce(image.samples, width: image.width, height: image.height, toWidth: w, height: h)
                .map { $0 >= 0.5 ? 1 : 0 }
        }
        return Tensor(shape: [images.count, 1, h, w], data: data)
    }

    /// Grey mask images (PGM, PBM, PAM of depth 1; several in a stream), each within the memory
    /// budget; the reader's messages are said of `label` (the option and file they came from).
    public static func readGreyImages(_ reader: ByteReader, label: String) throws -> [NetpbmImage] {
        do {
            return try NetpbmImage.readAll(reader) { iw, ih, depth in
                guard depth == 1 else {
                    throw ToolError("a mask image must be grey (PGM) or black and white (PBM), this one has \(depth) samples per pixel — convert it, e.g. ppmtopgm mask.ppm > mask.pgm")
                }
                try MemoryBudget.require(Double(iw) * Double(ih) * 8, for: "reading a \(iw)x\(ih) mask",
                                         remedy: "scale it down first, e.g. pamscale -xyfit 1024 1024 mask.pgm")
            }
        } catch let e as ToolError {
            // The reader's messages start with the file's name; say which option it was given to.
            let message = e.message.hasPrefix(reader.label + ": ") ? String(e.message.dropFirst(reader.label.count + 2)) : e.message
            throw ToolError("\(label): \(message)")
        }
    }

    /// True for the magic of a netpbm image (P1…P7).
    public static func isNetpbm(_ head: [UInt8]) -> Bool {
        head.count == 2 && head[0] == UInt8(ascii: "P") && (UInt8(ascii: "1")...UInt8(ascii: "7")).contains(head[1])
    }

    /// Area average of a width × height plane down (or up) to toWidth × toHeight cells: each cell
    /// is the mean of the image over the rectangle it covers.
    public static func reduce(_ plane: [Float], width: Int, height: Int, toWidth w: Int, height h: Int) -> [Float] {
        let wx = areaWeights(from: width, to: w), wy = areaWeights(from: height, to: h)
        // Rows first: [height, w], then columns: [h, w].
        var rows = [Double](repeating: 0, count: height * w)
        plane.withUnsafeBufferPointer { p in
            for y in 0..<height {
                for (x, weights) in wx.enumerated() {
                    var s = 0.0
                    for (i, a) in weights { s += a * Double(p[y * width + i]) }
                    rows[y * w + x] = s
                }
            }
        }
        var out = [Float](repeating: 0, count: h * w)
        for (y, weights) in wy.enumerated() {
            for x in 0..<w {
                var s = 0.0
                for (i, a) in weights { s += a * rows[i * w + x] }
                out[y * w + x] = Float(s)
            }
        }
        return out
    }

    /// For each of `m` cells over `n` pixels: the pixels it overlaps and the fraction of the cell
    /// each covers (the fractions of one cell sum to 1).
    static func areaWeights(from n: Int, to m: Int) -> [[(Int, Double)]] {
        (0..<m).map { j in
            // Cell j spans [j·n/m, (j+1)·n/m) in pixels; integers first, so that the bounds are exact.
            let lo = Double(j * n) / Double(m), hi = Double((j + 1) * n) / Double(m)
            let first = (j * n) / m, last = ((j + 1) * n + m - 1) / m
            return (first..<max(last, first + 1)).compactMap { i in
                let overlap = min(hi, Double(i + 1)) - max(lo, Double(i))
                return overlap > 0 ? (i, overlap / (hi - lo)) : nil
            }
        }
    }
}

/// Dilation of a binary mask in latent cells, for masks that miss the rim of an object: a cell
/// becomes 1 when any cell within `cells` of it (diagonals included: a (2·cells+1)² square) is 1.
public enum MaskDilation {
    /// Largest dilation the tools accept: past it any non-empty mask of a usual latent grid
    /// (up to 128 cells, 1024 pixels) is nearly all ones.
    public static let maxCells = 64

    /// `mask` [..., h, w] (each h × w plane dilated on its own) as a max filter over the square,
    /// separable: along rows, then along columns.
    public static func dilate(_ mask: Tensor, cells: Int) -> Tensor {
        guard cells > 0, mask.rank >= 2 else { return mask }
        let h = mask.shape[mask.rank - 2], w = mask.shape[mask.rank - 1], plane = h * w
        var out = mask
        var rows = [Float](repeating: 0, count: plane)
        for start in stride(from: 0, to: mask.count, by: max(plane, 1)) {
            mask.data.withUnsafeBufferPointer { src in
                for y in 0..<h {
                    for x in 0..<w {
                        var m = src[start + y * w + x]
                        for xx in max(0, x - cells)...min(w - 1, x + cells) { m = max(m, src[start + y * w + xx]) }
                        rows[y * w + x] = m
                    }
                }
            }
            out.data.withUnsafeMutableBufferPointer { dst in
                for y in 0..<h {
                    for x in 0..<w {
                        var m = rows[y * w + x]
                        for yy in max(0, y - cells)...min(h - 1, y + cells) { m = max(m, rows[yy * w + x]) }
                        dst[start + y * w + x] = m
                    }
                }
            }
        }
        return out
    }
}
