/// A rectangle of a picture in whole pixels: `--region X,Y,W,H`, `tensor bbox`'s answer,
/// `tensor cut --box`.
public struct PixelBox: Equatable, CustomStringConvertible {
    public var x: Int
    public var y: Int
    public var width: Int
    public var height: Int

    public init(x: Int, y: Int, width: Int, height: Int) {
        (self.x, self.y, self.width, self.height) = (x, y, width, height)
    }

    /// "X,Y,W,H", as the options take it.
    public var description: String { "\(x),\(y),\(width),\(height)" }

    public func contains(_ other: PixelBox) -> Bool {
        other.x >= x && other.y >= y && other.x + other.width <= x + width && other.y + other.height <= y + height
    }

    /// The box in the cells of a map of mapWidth × mapHeight covering a picture of
    /// pictureWidth × pictureHeight pixels (fractional cells).
    public func inCells(mapWidth: Int, mapHeight: Int, pictureWidth: Int, pictureHeight: Int)
        -> (x: Double, y: Double, width: Double, height: Double) {
        let sx = Double(mapWidth) / Double(pictureWidth), sy = Double(mapHeight) / Double(pictureHeight)
        return (Double(x) * sx, Double(y) * sy, Double(width) * sx, Double(height) * sy)
    }

    /// `X,Y,W,H`: four integers in decimal digits, X and Y at least 0, W and H at least 1.
    public static func parse(_ text: String, option: String) throws -> PixelBox {
        let parts = text.split(separator: ",", omittingEmptySubsequences: false).map(String.init)
        let values = parts.compactMap { p -> Int? in
            guard !p.isEmpty, p.utf8.allSatisfy({ $0 >= 0x30 && $0 <= 0x39 }), p.utf8.count <= 9 else { return nil }
            return Int(p)
        }
        guard parts.count == 4, values.count == 4, values[2] > 0, values[3] > 0 else {
            throw ToolError("\(option) '\(text)' is not X,Y,W,H — give four integers in pixels (X, Y from 0, W and H from 1), e.g. \(option) 100,80,512,512")
        }
        return PixelBox(x: values[0], y: values[1], width: values[2], height: values[3])
    }

    /// `WxH` (a picture's size) or `W:H` (an aspect): two integers from 1.
    public static func parsePair(_ text: String, separator: Character, option: String, example: String) throws -> (Int, Int) {
        let parts = text.split(separator: separator, omittingEmptySubsequences: false).map(String.init)
        let values = parts.compactMap { p -> Int? in
            guard !p.isEmpty, p.utf8.allSatisfy({ $0 >= 0x30 && $0 <= 0x39 }), p.utf8.count <= 9, let v = Int(p), v > 0 else { return nil }
            return v
        }
        guard parts.count == 2, values.count == 2 else {
            throw ToolError("\(option) '\(text)' is not two integers from 1 joined by '\(separator)' — e.g. \(option) \(example)")
        }
        return (values[0], values[1])
    }
}
