// Exact decimal strings for money and quantities (BigInt, never floats).

// "150.45" -> { units: 15045n, scale: 2 }; null when not a plain non-negative decimal.
export function parseDecimal(text) {
  const match = /^(\d+)(?:\.(\d+))?$/.exec(text || "");
  if (!match) return null;
  const fraction = match[2] || "";
  return { units: BigInt(match[1] + fraction), scale: fraction.length };
}

// The decimal places of a step such as a tick or lot size ("0.01" -> 2, "5" -> 0).
export function decimalPlaces(step) {
  return step.includes(".") ? step.split(".")[1].length : 0;
}

export function formatUnits(units, places) {
  const negative = units < 0n;
  const digits = (negative ? -units : units).toString().padStart(places + 1, "0");
  const text = places ? `${digits.slice(0, -places)}.${digits.slice(-places)}` : digits;
  return negative ? `-${text}` : text;
}

// a + b as a decimal string with the larger of their scales ("2" + "4.5" = "6.5").
export function addDecimals(a, b) {
  const x = parseDecimal(a);
  const y = parseDecimal(b);
  if (!x || !y) return null;
  const scale = Math.max(x.scale, y.scale);
  const units = x.units * 10n ** BigInt(scale - x.scale) + y.units * 10n ** BigInt(scale - y.scale);
  return formatUnits(units, scale);
}
