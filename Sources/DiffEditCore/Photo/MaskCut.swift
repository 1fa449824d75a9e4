/// `tensor cut`: the part of a whole-photo mask that a region of the photo covers, at the size
/// the region is edited at — the region's denoise mask (at its latent size) and its soft map
/// for composite, made from the whole photo's mask.
public enum MaskCut {
    /// Metadata of a cut: the box's width and height in the whole mask's cells ("6.25x6.5").
    public static let regionCells = "region.cells"

    /// Metadata of the whole-photo mask that does not hold for the cut (its size, its scale,
    /// its statistics).
    static let dropped: Set<String> = [MetadataKey.imageWidth, MetadataKey.imageHeight, MetadataKey.scale,
                                       "fraction_ones", "near_threshold"]

    /// `box` of a picture of pictureWidth × pictureHeight pixels that `mask` covers, bilinear
    /// resampled to width × height. A soft map stays soft (`mask.soft`); a 0/1 mask or a mask
    /// image is thresholded again at 0.5 (noise-diff-mask's rule: above it) and stays binary (`mask`).
    public static func cut(_ mask: MaskSource, box: PixelBox, pictureWidth: Int, pictureHeight: Int,
                           toWidth w: Int, height h: Int) throws -> TensorRecord {
        let picture = PixelBox(x: 0, y: 0, width: pictureWidth, height: pictureHeight)
        guard picture.contains(box) else {
            throw ToolError("--box \(box) is not inside the \(pictureWidth)x\(pictureHeight) picture — give X,Y,W,H with X+W ≤ \(pictureWidth) and Y+H ≤ \(pictureHeight) (tensor bbox makes one)")
        }
        guard mask.fits(width: pictureWidth, height: pictureHeight) else {
            throw ToolError("the mask is \(mask.map.width)x\(mask.map.height) cells, not the shape of a \(pictureWidth)x\(pictureHeight) picture — give --size the size of the photo the mask was made for")
        }
        let cells = box.inCells(mapWidth: mask.map.width, mapHeight: mask.map.height,
                                pictureWidth: pictureWidth, pictureHeight: pictureHeight)
        var map = mask.map.resampled(box: cells, toWidth: w, height: h)
        if !mask.isSoft { map = map.thresholded(above: 0.5) }
        var meta = (mask.record?.metadata ?? [:]).filter { !dropped.contains($0.key) }
        meta[MetadataKey.latentWidth] = "\(w)"
        meta[MetadataKey.latentHeight] = "\(h)"
        meta[MetadataKey.region] = box.description
        meta[MetadataKey.regionOf] = "\(pictureWidth)x\(pictureHeight)"
        // How many of the whole mask's cells the box spans: the cut is resampled to another grid,
        // and composite counts its refinement's radius in the cells the map was made on.
        meta[regionCells] = "\(cells.width)x\(cells.height)"
        return TensorRecord(name: mask.isSoft ? RecordName.softMask : RecordName.mask, shape: [1, 1, h, w],
                            floats: map.values, metadata: meta)
    }
}
