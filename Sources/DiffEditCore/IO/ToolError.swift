/// The one error type every tool reports: `toolname: message` on stderr and a non-zero exit.
/// Messages follow "what is wrong — what to do".
public struct ToolError: Error, CustomStringConvertible, Equatable {
    public var message: String
    public init(_ message: String) { self.message = message }
    public var description: String { message }
}
