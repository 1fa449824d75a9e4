#if canImport(Glibc)
import Glibc
#endif

/// The fixture tokenizer (Tests/Fixtures/sd1/tokenizer), loaded once; run.sh sets the path.
let tokenizer: CLIPTokenizer = {
    let dir = getenv("DIFFEDIT_FUZZ_TOKENIZER").map { String(cString: $0) } ?? "Tests/Fixtures/sd1/tokenizer"
    do { return try CLIPTokenizer(directory: dir) } catch { fatalError("tokenizer \(dir): \(error)") }
}()

/// libFuzzer entry: any bytes (decoded leniently, as tokenize does) must tokenize to ids in the
/// vocabulary, and round-trip through token() without trapping.
@_cdecl("LLVMFuzzerTestOneInput")
public func tokenizerFuzz(_ data: UnsafePointer<UInt8>, _ size: Int) -> Int32 {
    let text = String(decoding: UnsafeBufferPointer(start: data, count: size), as: UTF8.self)
    let ids = tokenizer.encode(text)
    for id in ids {
        guard tokenizer.token(id) != nil else { fatalError("id \(id) not in the vocabulary") }
    }
    return 0
}
