// f16 and bf16 conversions, exhaustively over every 16-bit word.
import t from 'tap';
import { bf16ToNumber, f16ToNumber, numberToBf16, numberToF16 } from '../dist/shared/half.js';

t.test('every f16 word survives a round trip through a number', async (t) => {
  let bad = 0;
  for (let h = 0; h < 0x10000; h++) {
    const x = f16ToNumber(h);
    if (Number.isNaN(x)) continue;
    if (numberToF16(x) !== h) bad++;
  }
  t.equal(bad, 0);
});

t.test('every bf16 word survives a round trip through a number', async (t) => {
  let bad = 0;
  for (let h = 0; h < 0x10000; h++) {
    const x = bf16ToNumber(h);
    if (Number.isNaN(x)) continue;
    if (numberToBf16(x) !== h) bad++;
  }
  t.equal(bad, 0);
});

t.test('rounding is to nearest, ties to even', async (t) => {
  // 1 + 2^-11 lies halfway between f16 1 (0x3c00) and its successor (0x3c01): ties go to even.
  t.equal(numberToF16(1 + 2 ** -11), 0x3c00);
  t.equal(numberToF16(1 + 3 * 2 ** -11), 0x3c02);
  t.equal(numberToF16(65520), 0x7c00, 'overflows to infinity');
  t.equal(numberToF16(2 ** -25), 0, 'half the smallest subnormal rounds to even (zero)');
  t.equal(numberToBf16(1 + 2 ** -8), 0x3f80);
  t.equal(numberToBf16(1 + 3 * 2 ** -8), 0x3f82);
  t.ok(Number.isNaN(bf16ToNumber(numberToBf16(NaN))));
  t.ok(Number.isNaN(f16ToNumber(numberToF16(NaN))));
});
