// The fee an order would pay, shown before it is sent: exact decimal arithmetic (BigInt) on
// the user's rates in ppm, rounded as the engine rounds (a fee up, a rebate toward zero).
import { formatUnits, parseDecimal } from "./decimal.js";

function multiply(a, b) {
  return { units: a.units * b.units, scale: a.scale + b.scale };
}

// The amount rounded to `places` decimals, `mode` "up" (away from zero) or "down" (toward zero).
function rounded(amount, places, mode) {
  const numerator = amount.units * 10n ** BigInt(places);
  const denominator = 10n ** BigInt(amount.scale);
  const negative = numerator < 0n;
  const magnitude = negative ? -numerator : numerator;
  let whole = magnitude / denominator;
  if (mode === "up" && magnitude % denominator !== 0n) whole += 1n;
  return negative ? -whole : whole;
}

// Fee (positive) or rebate (negative) of `notional` at `ppm`, in minor units of the quote.
export function feeUnits(notional, ppm, places) {
  const fee = { units: notional.units * BigInt(ppm), scale: notional.scale + 6 };
  return rounded(fee, places, ppm >= 0 ? "up" : "down");
}

const pct = (ppm) => `${(ppm / 10000).toFixed(ppm % 100 === 0 ? 2 : 4)} %`;

// What the ticket shows: "Fee ≈ 0.30 USD (taker 0.20 %) · total 150.00 USD".
export function feePreview({ body, rates, bestBid, bestAsk, quote, quotePrecision, compare }) {
  if (!rates) return "Fee: your fee rates are loading…";
  const side = body.side;
  const opposite = side === "buy" ? bestAsk : bestBid;
  let priceText = null;
  let role = "taker";
  let estimate = false;
  if (body.order_type === "limit") {
    priceText = body.price;
    const crosses =
      opposite !== null &&
      priceText &&
      parseDecimal(priceText) &&
      (side === "buy" ? compare(priceText, opposite) >= 0 : compare(priceText, opposite) <= 0);
    role = body.post_only || body.post_only_adjust || !crosses ? "maker" : "taker";
  } else if (body.order_type === "market") {
    if (body.quote_quantity) {
      const amount = parseDecimal(body.quote_quantity);
      if (!amount) return "Fee: enter an amount";
      const units = feeUnits(amount, rates.taker, quotePrecision);
      return `Fee at most ${formatUnits(units, quotePrecision)} ${quote} (taker ${pct(rates.taker)}), included in the amount`;
    }
    priceText = opposite;
    estimate = true;
  } else if (body.order_type === "stop_loss") {
    priceText = body.stop_price;
    estimate = true;
  } else {
    priceText = body.price ?? body.limit_price;
    estimate = true;
  }
  const price = parseDecimal(priceText);
  const quantity = parseDecimal(body.quantity);
  if (!quantity) return "Fee: enter a quantity";
  if (!price) {
    return body.order_type === "market" ? "Fee: no price to estimate from" : "Fee: enter a price";
  }
  const notional = multiply(price, quantity);
  const ppm = role === "maker" ? rates.maker : rates.taker;
  // The engine takes the fee of the notional in whole minor units (rounded down, at least one),
  // not of the exact product: 10.05 x 9.951 = 100.00755 pays 0.20 % of 100.00, 0.20, not 0.21.
  let total = rounded(notional, quotePrecision, "down");
  if (total === 0n && notional.units > 0n) total = 1n;
  const units = feeUnits({ units: total, scale: quotePrecision }, ppm, quotePrecision);
  const label = units < 0n ? "Rebate" : "Fee";
  const approx = estimate ? "≈ " : "";
  const shown = formatUnits(units < 0n ? -units : units, quotePrecision);
  const when = body.order_type === "limit" && role === "maker" ? ", if it rests" : "";
  return (
    `${label} ${approx}${shown} ${quote} (${role} ${pct(ppm)}${when}) · ` +
    `value ${approx}${formatUnits(total, quotePrecision)} ${quote}`
  );
}
