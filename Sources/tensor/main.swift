import ArgumentParser
import DiffEditCore
import DiffEditCLI
import Foundation

// `tensor`: inspect and convert diffedit tensor streams (man 1 tensor, man 5 diffedit-tensor).

struct Selection: ParsableArguments {
    @Option(name: .long, help: "Pick the record with this name.")
    var name: String?

    @Option(Numbers.index, "Pick the record at this index (0 is the first)", defaultText: nil)
    var index: Int?

    /// The selected record; with neither option, the only record (or the first, with a note).
    func pick(_ records: [TensorRecord], label: String) throws -> TensorRecord {
        if let name {
            guard let r = records.first(where: { $0.name == name }) else {
                throw ToolError("\(label) has no record named '\(name)' (it has: \(records.map(\.name).joined(separator: ", "))) — choose one of those with --name, or one by position with --index")
            }
            return r
        }
        if let index {
            guard index >= 0 && index < records.count else {
                throw ToolError("\(label) has \(records.count) record(s); index \(index) is out of range")
            }
            return records[index]
        }
        guard let first = records.first else { throw ToolError("\(label): empty stream, no record to pick") }
        return first
    }
}

/// The numeric options of the subcommands.
enum Numbers {
    static let index = NumberOption<Int>("--index", .atLeast(0))
    static let atol = NumberOption<Double>("--atol", .atLeast(0))
    static let rtol = NumberOption<Double>("--rtol", .atLeast(0))
    static let batch = NumberOption<Int>("--batch", .atLeast(0))
    static let channel = NumberOption<Int>("--channel", .atLeast(0))
    static let scale = NumberOption<Int>("--scale", .from(1, to: 64))
    static let bits = NumberOption<Int>("--bits", .oneOf([8, 16]))
    static let margin = NumberOption<Int>("--margin", .from(0, to: 100_000))
    static let threshold = NumberOption<Float>("--threshold", .from(0, below: 1))
}

struct Force: ParsableArguments {
    @Flag(name: [.customShort("f"), .long], help: "Write binary data even to a terminal.")
    var force = false
}

func readStream(_ path: String) throws -> (records: [TensorRecord], label: String) {
    let reader = try CLI.tensorInput(path)
    let records = try reader.readAll()
    if records.isEmpty { throw emptyStream(reader.label) }
    return (records, reader.label)
}

@main
struct TensorTool: DiffEditTool {
    static let configuration = CommandConfiguration(
        commandName: "tensor",
        abstract: "Inspect and convert diffedit tensor streams.",
        discussion: "Reads the stream format of man 5 diffedit-tensor. FILE defaults to - (stdin).",
        version: CLI.version,
        subcommands: [Head.self, Stats.self, Pick.self, ToNPY.self, FromNPY.self, Compare.self,
                      ToImage.self, FromImage.self, BBox.self, Cut.self])
}

struct Head: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Print the header of every record: index, name, dtype, shape, metadata.")
    @Argument(help: "Stream files; - is stdin.") var files: [String] = ["-"]

    func run() throws {
        try CLI.run(TensorTool.toolName) {
            for file in files {
                let reader = try CLI.tensorInput(file)
                var i = 0
                while let r = try reader.next() {
                    print("\(files.count > 1 ? reader.label + ": " : "")[\(i)] \(r.name) \(r.dtype.rawValue) [\(r.shape.map(String.init).joined(separator: ", "))] \(r.bytes.count) bytes")
                    for k in r.metadata.keys.sorted() {
                        print("    \(k)=\(TensorStream.escape(r.metadata[k]!))")
                    }
                    i += 1
                }
                if i == 0 { throw emptyStream(reader.label) }
            }
        }
    }
}

struct Stats: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Print min, max, mean, std and NaN/Inf counts of every record.")
    @Argument(help: "Stream file; - is stdin.") var file = "-"

    func run() throws {
        try CLI.run(TensorTool.toolName) {
            let reader = try CLI.tensorInput(file)
            var i = 0
            while let r = try reader.next() {
                // The table's header once a record has been read: a refused stream prints nothing.
                if i == 0 { print("index\tname\tdtype\tshape\tmin\tmax\tmean\tstd\tnan\tinf") }
                let s = TensorStatistics(r)
                let shape = r.shape.map(String.init).joined(separator: "x")
                print("\(i)\t\(r.name)\t\(r.dtype.rawValue)\t\(shape.isEmpty ? "scalar" : shape)\t\(fmt(s.min))\t\(fmt(s.max))\t\(fmt(s.mean))\t\(fmt(s.std))\t\(s.nan)\t\(s.inf)")
                i += 1
            }
            if i == 0 { throw emptyStream(reader.label) }
        }
    }
}

/// An empty stream is almost always a failed stage upstream: say so rather than print nothing.
func emptyStream(_ label: String) -> ToolError {
    ToolError("\(label): empty input (an empty stream, no tensor records) — did the stage before this one fail?")
}

func fmt(_ x: Double) -> String { String(format: "%.6g", x) }

struct Pick: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Write one record of a stream.")
    @OptionGroup var selection: Selection
    @OptionGroup var force: Force
    @Argument(help: "Stream file; - is stdin.") var file = "-"

    func run() throws {
        try CLI.run(TensorTool.toolName) {
            let out = try CLI.tensorOutput(force: force.force, copiesInput: true)
            let (records, label) = try readStream(file)
            try out.write(try selection.pick(records, label: label))
            try out.flush()
        }
    }
}

struct ToNPY: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "to-npy", abstract: "Write one record as a NumPy .npy file on stdout.")
    @OptionGroup var selection: Selection
    @OptionGroup var force: Force
    @Argument(help: "Stream file; - is stdin.") var file = "-"

    func run() throws {
        try CLI.run(TensorTool.toolName) {
            let out = try CLI.binaryOutput(force: force.force, what: ".npy data")
            let (records, label) = try readStream(file)
            try out.write(try NPY.encode(try selection.pick(records, label: label)))
            try out.flush()
        }
    }
}

struct FromNPY: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "from-npy", abstract: "Turn a NumPy .npy file into a one-record stream.")
    @Option(help: "Name of the record.") var name = "tensor"
    @Option(name: .customLong("meta"), help: "Metadata key=value (repeatable).") var meta: [String] = []
    @OptionGroup var force: Force
    @Argument(help: ".npy file; - is stdin.") var file = "-"

    func run() throws {
        try CLI.run(TensorTool.toolName) {
            var metadata: [String: String] = [:]
            for m in meta {
                guard let eq = m.firstIndex(of: "="), TensorStream.isValidKey(m[..<eq]),
                      !["name", "dtype", "shape"].contains(String(m[..<eq])) else {
                    throw ToolError("--meta '\(m)' is not key=value with a key of letters, digits, '_', '.', '-' (and not name/dtype/shape)")
                }
                metadata[String(m[..<eq])] = String(m[m.index(after: eq)...])
            }
            let out = try CLI.tensorOutput(force: force.force, copiesInput: true)
            let input = try ByteReader(path: file)
            let bytes = try input.readToEnd(limit: TensorStream.maxDataBytes)
            try out.write(try NPY.decode(bytes, name: name, metadata: metadata))
            try out.flush()
        }
    }
}

struct Compare: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Compare two streams record by record.",
        discussion: "Prints max abs and max relative error per record. Exits 1 when any element differs by more than atol + rtol*|b| (numpy.allclose), or the streams differ in record count, names, or shapes.")
    @Option(Numbers.atol, "Absolute tolerance")
    var atol: Double = 1e-4
    @Option(Numbers.rtol, "Relative tolerance")
    var rtol: Double = 0
    @Argument(help: "First stream (- is stdin).") var a: String
    @Argument(help: "Second stream, the reference.") var b: String

    func run() throws {
        var failed = false
        try CLI.run(TensorTool.toolName) {
            guard a != "-" || b != "-" else { throw ToolError("only one of the two streams can be stdin") }
            let (ra, la) = try readStream(a)
            let (rb, lb) = try readStream(b)
            if ra.count != rb.count {
                print("record count differs: \(la) has \(ra.count), \(lb) has \(rb.count)")
                failed = true
            }
            print("index\tname\tmax_abs\tmax_rel\toutside\tverdict")
            for i in 0..<min(ra.count, rb.count) {
                let x = ra[i], y = rb[i]
                if x.name != y.name || x.shape != y.shape {
                    print("\(i)\t\(x.name)\tshape/name differ: \(x.name) \(x.shapeDescription) vs \(y.name) \(y.shapeDescription)\t\t\tFAIL")
                    failed = true
                    continue
                }
                let c = TensorComparison(x, y, atol: atol, rtol: rtol)
                let ok = c.outside == 0
                if !ok { failed = true }
                print("\(i)\t\(x.name)\t\(fmt(c.maxAbs))\t\(fmt(c.maxRel))\t\(c.outside)\t\(ok ? "ok" : "FAIL")")
            }
        }
        if failed { throw ExitCode(1) }
    }
}

struct ToImage: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "to-image",
        abstract: "Render a record as a PGM/PPM image for a person to look at.",
        discussion: """
            Takes a rank-2 [H, W], rank-3 [C, H, W] or rank-4 [N, C, H, W] record. --rgb writes \
            3 channels in [-1, 1] as a PPM (as vae-decode would); otherwise one channel (or all \
            channels side by side with --tile) is mapped from --range (default: its own min..max; \
            a 0/1 mask maps to black/white) to grey levels.
            """)
    @OptionGroup var selection: Selection
    @OptionGroup var force: Force
    @Option(Numbers.batch, "Batch entry to show")
    var batch = 0
    @Option(Numbers.channel, "Channel to show")
    var channel = 0
    @Flag(help: "Show all channels side by side.") var tile = false
    @Flag(help: "Treat 3 channels in [-1, 1] as an RGB image.") var rgb = false
    @Option(parsing: .unconditional, help: "Value range lo:hi mapped to black..white, two finite numbers with lo < hi, e.g. -1:1 (default: the data's min:max).")
    var range: String?
    @Option(Numbers.scale, "Nearest-neighbour magnification factor")
    var scale = 1
    @Option(Numbers.bits, "Bits per sample")
    var bits = 8
    @Argument(help: "Stream file; - is stdin.") var file = "-"

    func run() throws {
        try CLI.run(TensorTool.toolName) {
            let out = try CLI.binaryOutput(force: force.force)
            let (records, label) = try readStream(file)
            let r = try selection.pick(records, label: label)
            guard r.dtype.isFloatingPoint || r.dtype == .u8 || r.dtype == .i32 else {
                throw ToolError("record '\(r.name)' is \(r.dtype.rawValue); only numeric images render")
            }
            var shape = r.shape
            switch shape.count {
            case 2: shape = [1, 1] + shape
            case 3: shape = [1] + shape
            case 4: break
            default:
                throw ToolError("record '\(r.name)' has shape \(r.shapeDescription); to-image needs [H, W], [C, H, W] or [N, C, H, W]")
            }
            let (n, c, h, w) = (shape[0], shape[1], shape[2], shape[3])
            guard batch >= 0 && batch < n else { throw ToolError("--batch \(batch) is out of range (record has \(n))") }
            guard h > 0 && w > 0 else { throw ToolError("record '\(r.name)' is empty") }
            guard h * scale <= 1 << 15 && w * scale * (tile ? c : 1) <= 1 << 15 else {
                throw ToolError("the image would be larger than 32768 pixels on a side — lower --scale")
            }
            let all = r.floats()
            let plane = Array(all[(batch * c * h * w)..<((batch + 1) * c * h * w)])
            if rgb {
                guard c == 3 else { throw ToolError("--rgb needs 3 channels; record '\(r.name)' has \(c)") }
                let t = upscale(Tensor(shape: [1, 3, h, w], data: plane), scale)
                try NetpbmImage.write(t, bits: bits, to: out)
                try out.flush()
                return
            }
            let channels: [Int]
            if tile {
                channels = Array(0..<c)
            } else {
                guard channel >= 0 && channel < c else { throw ToolError("--channel \(channel) is out of range (record has \(c))") }
                channels = [channel]
            }
            var grey = [Float](repeating: 0, count: h * w * channels.count)
            for (k, ch) in channels.enumerated() {
                for y in 0..<h {
                    for x in 0..<w { grey[y * w * channels.count + k * w + x] = plane[ch * h * w + y * w + x] }
                }
            }
            var lo: Float, hi: Float
            if let range {
                let parts = range.split(separator: ":")
                guard parts.count == 2, let a = Float(parts[0]), let b = Float(parts[1]), a.isFinite, b.isFinite, a < b,
                      (b - a).isFinite else {
                    throw ToolError("--range '\(range)' should be lo:hi, two finite numbers with lo < hi — e.g. -1:1")
                }
                (lo, hi) = (a, b)
            } else {
                let finite = grey.filter(\.isFinite)
                lo = finite.min() ?? 0
                hi = finite.max() ?? 1
                if lo == hi { (lo, hi) = lo == 0 ? (0, 1) : (min(0, lo), max(0, hi)) }
            }
            // Map lo..hi to -1..1 and reuse the image writer's rounding.
            let mapped = grey.map { (($0 - lo) / (hi - lo)) * 2 - 1 }
            let t = upscale(Tensor(shape: [1, 1, h, w * channels.count], data: mapped), scale)
            try NetpbmImage.write(t, bits: bits, to: out)
            try out.flush()
        }
    }

    func upscale(_ t: Tensor, _ k: Int) -> Tensor {
        k == 1 ? t : Conv2D.upsampleNearest(t, height: t.shape[2] * k, width: t.shape[3] * k)
    }
}

struct FromImage: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "from-image",
        abstract: "Read a netpbm image stream into an f32 [N, 3, H, W] record in [-1, 1].",
        discussion: "Grey images are replicated to 3 channels and alpha is dropped (with a note), as diffusers' VaeImageProcessor prepares images for the VAE. All images of a multi-image stream must share one size.")
    @Option(help: "Name of the record.") var name = "image"
    @OptionGroup var force: Force
    @Argument(help: "Netpbm file (PBM/PGM/PPM/PAM); - is stdin.") var file = "-"

    func run() throws {
        try CLI.run(TensorTool.toolName) {
            let out = try CLI.tensorOutput(force: force.force)
            let images = try NetpbmImage.readAll(try ByteReader(path: file))
            let first = images[0]
            for (i, im) in images.enumerated() where im.width != first.width || im.height != first.height {
                throw ToolError("image \(i) is \(im.width)x\(im.height) but image 0 is \(first.width)x\(first.height) — one stream must hold images of one size")
            }
            if images.contains(where: \.hasAlpha) { CLI.note(TensorTool.toolName, "note: alpha channel dropped") }
            let t = Tensor.concat(batch: images.map { $0.rgbTensor() })
            try out.write(TensorRecord(name: name, tensor: t, metadata: [
                "source.maxval": String(first.maxval), "source.depth": String(first.depth),
            ]))
            try out.flush()
        }
    }
}

struct BBox: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "bbox",
        abstract: "Print the rectangle of a photo to edit at the model's size: X Y W H.",
        discussion: """
            The bounding box of the mask (cells above --threshold) in the pixels of the photo it \
            covers, grown by --margin on every side, then to the aspect --aspect around its centre, \
            kept inside the photo (shifted; shrunk only when the photo is too small). An empty mask \
            prints one line on stderr and exits with status 3. See tensor(1).
            """)
    @Option(Numbers.margin, "Pixels of context around the mask's box", defaultText: "a quarter of the box's larger side, at least two mask cells")
    var margin: Int?
    @Option(name: .long, help: "W:H, the aspect of the box: the model's working aspect, two integers from 1.")
    var aspect = "1:1"
    @Option(name: .long, help: "WxH, the photo's size in pixels, which the mask covers (default: the mask's own size).")
    var size: String?
    @Option(Numbers.threshold, "A cell is in the mask where its value is above this")
    var threshold: Float = 0.5
    @Argument(help: "The mask: noise-diff-mask's mask or soft map, or a grey image; - is stdin.") var file = "-"

    func run() throws {
        var empty = false
        try CLI.run(TensorTool.toolName) {
            let ratio = try PixelBox.parsePair(aspect, separator: ":", option: "--aspect", example: "3:2")
            let picture = try size.map { try PixelBox.parsePair($0, separator: "x", option: "--size", example: "4000x3000") }
            let mask = try MaskSource.load(file, option: "mask")
            let (w, h) = picture ?? (mask.map.width, mask.map.height)
            guard mask.fits(width: w, height: h) else {
                throw ToolError("the mask is \(mask.map.width)x\(mask.map.height) cells, not the shape of a \(w)x\(h) photo — give --size the size of the photo the mask was made for")
            }
            guard let box = MaskBoundingBox.box(mask.map, threshold: threshold, width: w, height: h, margin: margin, aspect: ratio) else {
                empty = true
                return
            }
            print("\(box.x) \(box.y) \(box.width) \(box.height)")
        }
        if empty {
            CLI.printError(TensorTool.toolName, "the mask is empty (no cell above \(threshold.optionText)): there is nothing to edit — skip this photo (exit status 3)")
            throw ExitCode(3)
        }
    }
}

struct Cut: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "cut",
        abstract: "Cut a region out of a whole-photo mask, resampled to a size.",
        discussion: """
            From a mask covering a photo of --size pixels, the rectangle --box resampled bilinear to \
            --to: a soft map (mask.soft) stays soft, a mask (mask) is thresholded again at 0.5. The \
            region's denoise mask (at its latent size) and its soft map for composite. See tensor(1).
            """)
    @Option(name: .long, help: "X,Y,W,H: the rectangle of the photo, in pixels (tensor bbox prints one).")
    var box: String
    @Option(name: .long, help: "WxH: the size of the photo the mask covers, in pixels.")
    var size: String
    @Option(name: .long, help: "wxh: the size of the cut mask (the region's latent size, e.g. 64x64).")
    var to: String
    @OptionGroup var force: Force
    @Argument(help: "The whole photo's mask: a stream with mask or mask.soft, or a grey image; - is stdin.") var file = "-"

    func run() throws {
        try CLI.run(TensorTool.toolName) {
            let rect = try PixelBox.parse(box, option: "--box")
            let (w, h) = try PixelBox.parsePair(size, separator: "x", option: "--size", example: "4000x3000")
            let (tw, th) = try PixelBox.parsePair(to, separator: "x", option: "--to", example: "64x64")
            guard tw <= 16384 && th <= 16384 else {
                throw ToolError("--to \(to) is larger than 16384 on a side — give the latent size of the region, e.g. 64x64")
            }
            let out = try CLI.tensorOutput(force: force.force)
            let mask = try MaskSource.load(file, option: "mask")
            try out.write(try MaskCut.cut(mask, box: rect, pictureWidth: w, pictureHeight: h, toWidth: tw, height: th))
            try out.flush()
        }
    }
}
