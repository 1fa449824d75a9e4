/// A mask for the photo tools (composite, tensor bbox, tensor cut): a tensor stream holding
/// noise-diff-mask's `mask` [1, 1, h, w] of 0/1 or its soft map `mask.soft` in [0, 1], or a grey
/// netpbm image (PGM, PBM, PAM of depth 1; white = edit) of any size.
public struct MaskSource {
    public var map: FloatMap
    /// A `mask.soft` record (else a 0/1 mask, or an image's grey levels).
    public var isSoft: Bool
    /// The record it came from (nil for an image): its name and metadata.
    public var record: TensorRecord?

    public init(map: FloatMap, isSoft: Bool, record: TensorRecord? = nil) {
        (self.map, self.isSoft, self.record) = (map, isSoft, record)
    }

    /// Reads the mask given to `option` (a path, or "-" for stdin).
    public static func load(_ path: String, option: String) throws -> MaskSource {
        let reader: ByteReader
        do { reader = try ByteReader(path: path) } catch let e as ToolError { throw ToolError("\(option) \(path): \(e.message)") }
        let terminal = reader.fd == 0 && reader.isTerminal
        if !terminal, MaskImport.isNetpbm(try reader.peekBytes(upTo: 2)) { return try image(reader, label: "\(option) \(path)") }
        // Non-finite values are refused below, in words for a mask (there is no --allow-nonfinite).
        let records = try DiffEditIO.records(path, option: option, allowNonfinite: true, reader: terminal ? nil : reader)
        let names = [RecordName.softMask, RecordName.mask]
        guard let r = names.lazy.compactMap({ n in records.first { $0.name == n } }).first else {
            throw ToolError("\(option) \(path) has no record '\(RecordName.mask)' or '\(RecordName.softMask)' (it has \(records.map(\.name).joined(separator: ", "))) — give noise-diff-mask's output (or its --soft-output), or a grey mask image")
        }
        return try fromRecord(r, label: "\(option) \(path)")
    }

    /// A `mask` or `mask.soft` record as a map: [1, 1, h, w], [1, h, w] or [h, w], finite, in [0, 1].
    public static func fromRecord(_ r: TensorRecord, label: String) throws -> MaskSource {
        guard r.dtype.isFloatingPoint || r.dtype == .u8 || r.dtype == .i32 else {
            throw ToolError("\(label): record '\(r.name)' is \(r.dtype.rawValue), not a numeric mask — give noise-diff-mask's output")
        }
        let s = r.shape
        guard s.count >= 2, s.count <= 4, s.dropLast(2).allSatisfy({ $0 == 1 }), s[s.count - 1] > 0, s[s.count - 2] > 0 else {
            throw ToolError("\(label): record '\(r.name)' has shape \(r.shapeDescription), not one mask [1, 1, h, w] — pick one image's mask first (a batch is not a photo)")
        }
        let values = r.floats()
        let (nan, inf) = r.nonFiniteCounts
        guard nan == 0 && inf == 0 else {
            throw ToolError("\(label): record '\(r.name)' holds \(nan) NaN and \(inf) infinite values — remake the mask; the stage that made it diverged or the file is corrupt")
        }
        guard values.allSatisfy({ $0 >= 0 && $0 <= 1 }) else {
            throw ToolError("\(label): record '\(r.name)' has values outside [0, 1] (\(values.min()!)…\(values.max()!)), not a mask — give noise-diff-mask's mask or soft map")
        }
        return MaskSource(map: FloatMap(width: s[s.count - 1], height: s[s.count - 2], values: values),
                          isSoft: r.name == RecordName.softMask, record: r)
    }

    /// A grey image: its samples / maxval (white, 1, is "edit").
    static func image(_ reader: ByteReader, label: String) throws -> MaskSource {
        let images = try MaskImport.readGreyImages(reader, label: label)
        guard images.count == 1 else {
            throw ToolError("\(label) holds \(images.count) images, a mask is one — split the stream first, e.g. pamsplit")
        }
        let im = images[0]
        return MaskSource(map: FloatMap(width: im.width, height: im.height, values: im.samples), isSoft: false)
    }

    /// Whether the map can depict a picture of width × height: the same aspect within one cell
    /// (the latent grid rounds the picture's sides down to whole cells).
    public func fits(width: Int, height: Int) -> Bool {
        let (w, h) = (Double(map.width), Double(map.height))
        let cellsWide = Double(width) * h / Double(height), cellsHigh = Double(height) * w / Double(width)
        return abs(cellsWide - w) <= 1 && abs(cellsHigh - h) <= 1
    }
}
