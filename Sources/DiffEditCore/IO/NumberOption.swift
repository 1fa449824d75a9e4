/// The domain of every numeric command-line option, in one place per option: the name, the values
/// it takes and how --help describes them. The same value parses the option's text (ArgumentParser's
/// transform, so a refused value never reaches the tool's work) and checks values that come from
/// elsewhere (a stream's metadata, a model folder's file), so the parser, the check and the help
/// text cannot disagree. Every real number must be finite; every option has a lower bound and,
/// where one exists, an upper bound.
public protocol OptionNumber: Comparable, Sendable {
    /// `value` when it is exactly a value of this type (an integer type refuses 2.5 and 1e30).
    init?(optionValue value: Double)
    /// Exactly, for an integer type (a Double loses digits past 2^53); nil for a real type.
    static func exactInteger(_ text: String) -> Self?
    /// The value as --help, messages and metadata print it (7.5, 100, 0.8).
    var optionText: String { get }
    var asDouble: Double { get }
    static var isInteger: Bool { get }
}

extension OptionNumber where Self: FixedWidthInteger {
    public init?(optionValue value: Double) {
        guard value.rounded() == value, let v = Self(exactly: value) else { return nil }
        self = v
    }
    public static func exactInteger(_ text: String) -> Self? { Self(text) }
    public var optionText: String { String(self) }
    public var asDouble: Double { Double(self) }
    public static var isInteger: Bool { true }
}

extension OptionNumber where Self: BinaryFloatingPoint {
    public init?(optionValue value: Double) {
        let v = Self(value)
        guard v.isFinite else { return nil }
        self = v + 0  // −0 is 0
    }
    public static func exactInteger(_ text: String) -> Self? { nil }
    public var optionText: String {
        let d = Double(self)
        if d == d.rounded(), abs(d) < 1e15 { return String(Int64(d)) }
        return "\(self)"
    }
    public var asDouble: Double { Double(self) }
    public static var isInteger: Bool { false }
}

extension Int: OptionNumber {}
extension UInt64: OptionNumber {}
extension Float: OptionNumber {}
extension Double: OptionNumber {}

/// The values a numeric option takes: an interval (each end open or closed, the upper one possibly
/// absent) or a short list of choices.
public struct NumberDomain<Value: OptionNumber>: Sendable {
    public let lower: Value
    public let lowerIncluded: Bool
    public let upper: Value?
    public let upperIncluded: Bool
    public let choices: [Value]?

    init(lower: Value, lowerIncluded: Bool = true, upper: Value?, upperIncluded: Bool = true, choices: [Value]? = nil) {
        self.lower = lower
        self.lowerIncluded = lowerIncluded
        self.upper = upper
        self.upperIncluded = upperIncluded
        self.choices = choices
    }

    /// lower ≤ v ≤ upper.
    public static func from(_ lower: Value, to upper: Value) -> Self { Self(lower: lower, upper: upper) }
    /// lower < v ≤ upper.
    public static func above(_ lower: Value, atMost upper: Value) -> Self {
        Self(lower: lower, lowerIncluded: false, upper: upper)
    }
    /// lower ≤ v < upper.
    public static func from(_ lower: Value, below upper: Value) -> Self {
        Self(lower: lower, upper: upper, upperIncluded: false)
    }
    /// lower ≤ v (and finite).
    public static func atLeast(_ lower: Value) -> Self { Self(lower: lower, upper: nil) }
    /// One of a few values.
    public static func oneOf(_ choices: [Value]) -> Self {
        Self(lower: choices.min()!, upper: choices.max()!, choices: choices)
    }

    public func contains(_ v: Value) -> Bool {
        guard v.asDouble.isFinite else { return false }
        if let choices { return choices.contains(v) }
        guard lowerIncluded ? v >= lower : v > lower else { return false }
        guard let upper else { return true }
        return upperIncluded ? v <= upper : v < upper
    }

    /// "an integer from 1 to 1000", "a number above 0, at most 1", "8 or 16" (--help, the man
    /// pages and every refusal use these words).
    public var description: String {
        if let choices {
            let texts = choices.map(\.optionText)
            return texts.dropLast().joined(separator: ", ") + " or " + texts.last!
        }
        let kind = Value.isInteger ? "an integer" : "a number"
        switch (lowerIncluded, upper, upperIncluded) {
        case (true, let u?, true): return "\(kind) from \(lower.optionText) to \(u.optionText)"
        case (true, nil, _): return "\(kind) of at least \(lower.optionText)"
        case (false, nil, _): return "\(kind) above \(lower.optionText)"
        case (let li, let u?, let ui):
            return "\(kind) \(li ? "from" : "above") \(lower.optionText), \(ui ? "at most" : "below") \(u.optionText)"
        }
    }
}

extension NumberDomain where Value == Int {
    /// Inference steps: diffusers' schedules have 1000 training timesteps.
    public static let steps = Self.from(1, to: 1000)
}
extension NumberDomain where Value == UInt64 {
    /// A seed of torch.Generator.manual_seed: any unsigned 64-bit integer.
    public static let seed = Self.from(0, to: .max)
}
extension NumberDomain where Value == Float {
    /// Classifier-free guidance scale; 1 or less turns guidance off (diffusers: guidance_scale > 1).
    public static let guidance = Self.from(0, to: 100)
}
extension NumberDomain where Value == Double {
    /// A fraction of the schedule (strength, encode strength).
    public static let fraction = Self.above(0, atMost: 1)
}

/// A numeric option: its name and domain. `parse` is the option's ArgumentParser transform;
/// `check` refuses a value of the option that came from elsewhere.
public struct NumberOption<Value: OptionNumber>: Sendable {
    public let name: String
    public let domain: NumberDomain<Value>

    public init(_ name: String, _ domain: NumberDomain<Value>) {
        self.name = name
        self.domain = domain
    }

    /// The option's text as a value of the domain; any other text is refused with the domain.
    /// `subject` names where a text not typed as the option came from ("the stack's metadata
    /// steps=") and `remedy` what to do then.
    ///
    /// An integer option takes decimal digits only, with an optional sign: `50`, `+50`, `050`
    /// (decimal, not octal) and `-1` (a number, refused as out of range) are integers; `0x10`,
    /// `1e1`, `10.0`, `1_0`, ` 10` are not, and are refused rather than read as 16 or 10 (Swift's
    /// Double(_:) takes hexadecimal and exponents, which once let them through). A real option
    /// takes what Double(_:) reads, finite.
    public func parse(_ text: String, subject: String? = nil, remedy: String? = nil) throws -> Value {
        let cut = text.count > 40 ? text.prefix(40) + "…" : text
        let shown = cut.isEmpty || cut.contains(" ") ? "'\(cut)'" : cut
        func refuse(_ problem: String, remedy other: String? = nil) -> ToolError {
            refusal(shown, problem, subject: subject, remedy: remedy ?? other)
        }
        if Value.isInteger {
            if let magnitude = Self.decimalDigits(text) {
                // A value past the type (99999999999999999999, or any negative for an unsigned
                // type) is out of range like any other; −0 is 0.
                let v = magnitude.allSatisfy({ $0 == UInt8(ascii: "0") }) ? Value.exactInteger("0") : Value.exactInteger(text)
                guard let v, domain.contains(v) else { throw refuse("is out of range") }
                return v
            }
        }
        guard let d = Double(text) else {
            // `--steps --quiet`: the parser took the next option for the missing value.
            throw refuse(text.hasPrefix("-") && text.count > 1 ? "is not a number (is the value missing?)" : "is not a number")
        }
        guard !d.isNaN else { throw refuse("is not a number") }
        if Value.isInteger {
            guard d.isFinite else { throw refuse("is out of range") }
            guard d.rounded() == d else { throw refuse("is not an integer") }
            // 1e1, 10.0, 0x10: a number with an integer value, but not written as an integer.
            throw refuse("is not written in decimal digits",
                         remedy: "write the integer in the digits 0-9 (e.g. \(domain.lower.optionText)), without exponent, fraction or 0x")
        }
        guard let v = Value(optionValue: d) else { throw refuse("is out of range") }
        guard domain.contains(v) else { throw refuse("is out of range") }
        return v
    }

    /// The digits of `text` when it is an optional sign followed by one or more ASCII decimal
    /// digits (the only way an integer option may be written), else nil.
    static func decimalDigits(_ text: String) -> Substring.UTF8View? {
        var digits = Substring(text).utf8
        if let first = digits.first, first == UInt8(ascii: "+") || first == UInt8(ascii: "-") { digits = digits.dropFirst() }
        guard !digits.isEmpty, digits.allSatisfy({ $0 >= 0x30 && $0 <= 0x39 }) else { return nil }
        return digits
    }

    /// Refuses `value` unless it lies in the domain (`subject` and `remedy` as for `parse`).
    @discardableResult
    public func check(_ value: Value, subject: String? = nil, remedy: String? = nil) throws -> Value {
        guard domain.contains(value) else {
            throw refusal(value.optionText, "is out of range", subject: subject, remedy: remedy)
        }
        return value
    }

    /// "--steps -1 is out of range: --steps takes an integer from 1 to 1000 — give a value …"
    private func refusal(_ shown: String, _ problem: String, subject: String?, remedy: String?) -> ToolError {
        ToolError("\(subject ?? name + " ")\(shown) \(problem): \(name) takes \(domain.description) — \(remedy ?? "give a value in that range, or leave the option out for its default")")
    }

    /// --help text: "Inference steps of the schedule: an integer from 1 to 1000 (default: 50)."
    public func helpText(_ abstract: String, default shown: String?) -> String {
        var a = abstract
        while a.hasSuffix(".") { a.removeLast() }
        return "\(a): \(domain.description)" + (shown.map { " (default: \($0))" } ?? "") + "."
    }
}
