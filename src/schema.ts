/**
 * JSON-schema helpers shared by the files latentwatch reads (daemon config, trial config, probe
 * files): schemas are written with TypeBox, so each file's TypeScript type is `Static<typeof Schema>`
 * of the very object ajv validates against.
 */
import { Ajv, type ErrorObject } from 'ajv';
import { Type, type Static, type TObject, type TObjectOptions, type TProperties, type TSchema, type TUnion, type TUnsafe } from 'typebox';

/** An object schema that refuses unknown keys (`additionalProperties: false`), so typos fail loudly. */
export function closedObject<P extends TProperties>(properties: P, options: TObjectOptions = {}): TObject<P> & { additionalProperties: false } {
  return Type.Object(properties, { ...options, additionalProperties: false }) as TObject<P> & { additionalProperties: false };
}

/** `T | null`. */
export function nullable<T extends TSchema>(schema: T) {
  return Type.Union([schema, Type.Null()]);
}

/**
 * A validator for `schema` that returns every problem (empty when valid), compiled on first use so
 * that importing a module costs nothing. Strict ajv: an unknown keyword is a bug in the schema.
 */
export function schemaValidator(schema: TSchema): (value: unknown) => ErrorObject[] {
  let validate: ReturnType<Ajv['compile']> | undefined;
  return (value) => {
    validate ??= new Ajv({ allErrors: true, strict: true, allowUnionTypes: true }).compile(schema);
    return validate(value) ? [] : [...(validate.errors ?? [])];
  };
}

/**
 * Objects told apart by the value of `tag` (each branch's `tag` is a Literal or an Enum). Typed as
 * the union of the branches; validated with one if/then per branch, so a value is checked against
 * the branch it names and its errors are that branch's, not every branch's (as anyOf would give).
 */
export function taggedUnion<T extends TSchema[]>(tag: string, branches: [...T]): TUnsafe<Static<TUnion<T>>> {
  const tagValues = branches.map((b) => {
    const s = (b as unknown as TObject).properties[tag] as { const?: unknown; enum?: unknown[] } | undefined;
    if (s?.const !== undefined) return [s.const];
    if (Array.isArray(s?.enum)) return s.enum;
    throw new Error(`taggedUnion: a branch has no literal or enum ${tag}`);
  });
  return Type.Unsafe<Static<TUnion<T>>>({
    type: 'object',
    required: [tag],
    properties: { [tag]: { enum: tagValues.flat() } },
    allOf: branches.map((then, i) => ({ if: { properties: { [tag]: { enum: tagValues[i] } } }, then })),
  });
}

/** Deeply readonly view of a validated value. */
export type DeepReadonly<T> = T extends (infer U)[]
  ? readonly DeepReadonly<U>[]
  : T extends object
    ? { readonly [K in keyof T]: DeepReadonly<T[K]> }
    : T;
