/// Lines of a text file as bytes, LF and CRLF alike: the one line splitter of every text the
/// tools read (prompts, merges.txt). Splitting a Swift String on "\n" misses CRLF line ends,
/// since "\r\n" is one Character (a grapheme cluster), so text is split as UTF-8 bytes.
public enum TextLines {
    /// Calls `body` with each line's number (from 1) and bytes, without its "\n" or "\r\n". A
    /// last line without a line end counts; a final line end does not start an empty line.
    public static func forEach(in bytes: UnsafeBufferPointer<UInt8>,
                               _ body: (_ number: Int, _ line: UnsafeBufferPointer<UInt8>) throws -> Void) rethrows {
        var start = 0, number = 0
        while start < bytes.count {
            var end = start
            while end < bytes.count && bytes[end] != 0x0A { end += 1 }
            number += 1
            var stop = end
            if stop > start && bytes[stop - 1] == 0x0D { stop -= 1 }
            try body(number, UnsafeBufferPointer(rebasing: bytes[start..<stop]))
            start = end + 1
        }
    }

    /// The lines of UTF-8 `bytes` as strings (nil when they are not UTF-8). A byte-order mark
    /// at the start (Notepad writes one) is not text: it is dropped.
    public static func strings(_ bytes: [UInt8]) -> [String]? {
        var out: [String] = []
        var valid = true
        let bom = bytes.starts(with: [0xEF, 0xBB, 0xBF]) ? 3 : 0
        bytes.withUnsafeBufferPointer { all in
            forEach(in: UnsafeBufferPointer(rebasing: all[bom...])) { _, line in
                guard valid, let s = String(validating: line, as: UTF8.self) else { valid = false; return }
                out.append(s)
            }
        }
        return valid ? out : nil
    }
}
